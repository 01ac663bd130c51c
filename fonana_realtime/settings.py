"""Settings: every knob of the server, read once from the environment and `.env`.

The real environment wins over `.env`; `.env` is looked for in the working
directory and in `../.env` (the old Node server read the latter, operators still
keep it there). Nothing else in the package reads `os.environ`.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one line for the operator."""


def _load_env() -> dict[str, str]:
    merged: dict[str, str] = {}
    # Lowest priority first: ../.env, then ./.env, then the real environment.
    for path in (Path("..") / ".env", Path(".env")):
        if path.is_file():
            merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(os.environ)
    return merged


def _int(env, name, default):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None


def _float(env, name, default):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def _leeway(env) -> int:
    """WS_JWT_LEEWAY_SECONDS: clock skew allowed on `exp`; PROTOCOL.md 2.1 caps it at 30 s."""
    value = _int(env, "WS_JWT_LEEWAY_SECONDS", 10)
    if not 0 <= value <= 30:
        raise SettingsError(f"WS_JWT_LEEWAY_SECONDS must be between 0 and 30, got {value}")
    return value


def _list(env, name):
    return [p.strip() for p in env.get(name, "").split(",") if p.strip()]


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 3002
    database_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "fonana:rt:"
    jwt_secrets: tuple[str, ...] = ()
    jwt_secrets_differ: bool = False
    api_secret: str | None = None
    allowed_origins: tuple[str, ...] = ()     # empty = all
    data_dir: str = "data"
    log_dir: str = "logs"
    production: bool = False
    workers: int | None = None
    worker_connections: int = 10000
    ping_interval: float = 25.0
    max_message_bytes: int = 65536
    rate_per_sec: float = 20.0
    rate_burst: int = 40
    rate_abuse_seconds: float = 5.0
    max_subscriptions: int = 200
    max_connections_per_user: int = 20
    handshakes_per_ip_per_sec: float = 20.0
    handshakes_per_ip_burst: int = 50
    trusted_proxies: tuple[str, ...] = ()
    send_backlog_bytes: int = 1048576
    send_backlog_frames: int = 1000
    drain_seconds: float = 10.0
    api_max_body_bytes: int = 1048576
    api_max_events: int = 1000
    metrics_public: bool = False
    db_pool_size: int = 10
    user_cache_seconds: float = 5.0
    jwt_leeway_seconds: int = 10
    legacy_type_gap_ms: int = 120
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def embedded(self) -> bool:
        """True on the embedded default: SQLite file, dev secrets allowed."""
        return not self.database_url

    @property
    def sqlite_path(self) -> str:
        return str(Path(self.data_dir) / "fonana.sqlite3")

    @property
    def all_origins_allowed(self) -> bool:
        return not self.allowed_origins or "*" in self.allowed_origins


def _dev_secrets(data_dir: str) -> dict[str, str]:
    """The embedded default's own secrets, made once and kept in DATA_DIR so tokens
    minted by the CLI keep working across restarts. Never used with DATABASE_URL."""
    path = Path(data_dir) / "dev-secrets.json"
    if path.is_file():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {"jwt_secret": secrets.token_urlsafe(32), "api_secret": secrets.token_urlsafe(24)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(values, fh)
    return values


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read every setting; raise SettingsError with a one-line reason when the
    production launch lacks what it needs."""
    env = _load_env() if env is None else env
    warnings: list[str] = []
    database_url = env.get("DATABASE_URL", "").strip() or None
    production = bool(database_url) or env.get("NODE_ENV", "") == "production" \
        or env.get("FONANA_ENV", "") == "production"
    data_dir = env.get("DATA_DIR", "").strip() or "data"

    # The Next.js signer uses JWT_SECRET first, then NEXTAUTH_SECRET: accept either.
    jwt = [s for s in (env.get("JWT_SECRET", ""), env.get("NEXTAUTH_SECRET", "")) if s]
    differ = len(jwt) == 2 and jwt[0] != jwt[1]
    if differ:
        warnings.append("JWT_SECRET and NEXTAUTH_SECRET differ; tokens signed with either are accepted")
    jwt = list(dict.fromkeys(jwt))
    api_secret = env.get("WS_API_SECRET", "") or None
    if not jwt or api_secret is None:
        if production:
            if not jwt:
                raise SettingsError("no JWT secret: set JWT_SECRET or NEXTAUTH_SECRET "
                                    "(required with DATABASE_URL or NODE_ENV=production)")
        else:
            dev = _dev_secrets(data_dir)
            if not jwt:
                jwt = [dev["jwt_secret"]]
                warnings.append(f"embedded default: using the dev JWT secret kept in {data_dir}/dev-secrets.json")
            if api_secret is None:
                api_secret = dev["api_secret"]
    if production and api_secret is None:
        warnings.append("WS_API_SECRET is not set: the HTTP API answers 503 until it is")

    origins = tuple(_list(env, "ALLOWED_ORIGINS"))
    if not origins and production:
        warnings.append("ALLOWED_ORIGINS is not set: browser handshakes from every origin are accepted")

    workers_raw = env.get("WS_WORKERS", "").strip()
    return Settings(
        host=env.get("WS_HOST", "").strip() or "0.0.0.0",
        port=_int(env, "WS_PORT", 3002),
        database_url=database_url,
        redis_url=env.get("REDIS_URL", "").strip() or None,
        redis_prefix=env.get("REDIS_PREFIX", "fonana:rt:"),
        jwt_secrets=tuple(jwt),
        jwt_secrets_differ=differ,
        api_secret=api_secret,
        allowed_origins=origins,
        data_dir=data_dir,
        log_dir=env.get("LOG_DIR", "logs"),
        production=production,
        workers=int(workers_raw) if workers_raw else None,
        worker_connections=_int(env, "WS_WORKER_CONNECTIONS", 10000),
        ping_interval=_float(env, "WS_PING_INTERVAL", 25.0),
        max_message_bytes=_int(env, "WS_MAX_MESSAGE_BYTES", 65536),
        rate_per_sec=_float(env, "WS_RATE_PER_SEC", 20.0),
        rate_burst=_int(env, "WS_RATE_BURST", 40),
        rate_abuse_seconds=_float(env, "WS_RATE_ABUSE_SECONDS", 5.0),
        max_subscriptions=_int(env, "WS_MAX_SUBSCRIPTIONS", 200),
        max_connections_per_user=_int(env, "WS_MAX_CONNECTIONS_PER_USER", 20),
        handshakes_per_ip_per_sec=_float(env, "WS_HANDSHAKES_PER_IP_PER_SEC", 20.0),
        handshakes_per_ip_burst=_int(env, "WS_HANDSHAKES_PER_IP_BURST", 50),
        trusted_proxies=tuple(_list(env, "TRUSTED_PROXIES")),
        send_backlog_bytes=_int(env, "WS_SEND_BACKLOG_BYTES", 1048576),
        send_backlog_frames=_int(env, "WS_SEND_BACKLOG_FRAMES", 1000),
        drain_seconds=_float(env, "WS_DRAIN_SECONDS", 10.0),
        api_max_body_bytes=_int(env, "API_MAX_BODY_BYTES", 1048576),
        api_max_events=_int(env, "API_MAX_EVENTS", 1000),
        metrics_public=env.get("METRICS_PUBLIC", "0").strip() in ("1", "true", "yes"),
        db_pool_size=_int(env, "DB_POOL_SIZE", 10),
        user_cache_seconds=_float(env, "WS_USER_CACHE_SECONDS", 5.0),
        jwt_leeway_seconds=_leeway(env),
        legacy_type_gap_ms=_int(env, "WS_LEGACY_TYPE_GAP_MS", 120),
        warnings=tuple(warnings),
    )
