"""Settings: every knob of the server, read once from the environment and `.env`.

The real environment wins over `.env`; `.env` is looked for in the working
directory and in `../.env` (the old Node server read the latter, operators still
keep it there). The server reads its configuration only here; the two other
readers of `os.environ` in the package are not server settings: `publisher.py`
(a client library other services import: REDIS_URL, REDIS_PREFIX, WS_API_SECRET
as its defaults) and `metrics.py` (PROMETHEUS_MULTIPROC_DIR, set by gunicorn.conf.py).

A knob is one line of `Settings`: `name: type = setting(<variable>, default, parser)`.
`load_settings` reads every such line; its name, default and parser are written
nowhere else. Only the secrets are derived by hand (`_secrets`).
"""
from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path

from dotenv import dotenv_values

from .wire import DEFAULT_PREFIX


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


# -- parsers: (ENV name, raw text stripped and not empty) -> value, or SettingsError ------------

def whole(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None


def number(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):          # float() reads "nan" and "inf"
        raise SettingsError(f"{name} must be a finite number, got {raw!r}")
    return value


def text(name: str, raw: str) -> str:
    return raw


def comma_list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def flag(name: str, raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be 1 or 0, got {raw!r}")


def one_of(*names: str):
    """A parser for one of a few words, case-insensitive; the word in lower case."""
    def parse(name: str, raw: str) -> str:
        if raw.lower() not in names:
            raise SettingsError(f"{name} must be one of {', '.join(names)}, got {raw!r}")
        return raw.lower()
    return parse


def between(low, high, parse=whole):
    """A parser that also refuses values outside [low, high]."""
    def bounded(name: str, raw: str):
        value = parse(name, raw)
        if not low <= value <= high:
            raise SettingsError(f"{name} must be between {low} and {high}, got {raw}")
        return value
    bounded.parses = parse          # what it reads before the range (tests: malformed numbers)
    return bounded


def url(*schemes: str):
    """A parser for a URL whose scheme is one of `schemes` (what the client library
    connecting with it understands); anything else would end in a traceback per worker."""
    def parse(name: str, raw: str) -> str:
        scheme = raw.split("://", 1)[0].lower() if "://" in raw else ""
        if scheme not in schemes:
            raise SettingsError(f"{name} must start with {' or '.join(s + '://' for s in schemes)}, "
                                f"got {(scheme + '://') if scheme else 'no scheme'}")
        if not raw.split("://", 1)[1].strip("/"):
            raise SettingsError(f"{name} names no server after {scheme}://")
        return raw
    return parse


def redis_url(name: str, raw: str) -> str:
    """REDIS_URL of any topology (PROTOCOL.md 10), its shape checked here rather than by
    a traceback in every worker (broker/link.py)."""
    from .broker.link import SCHEMES, check_url
    raw = url(*SCHEMES)(name, raw)
    try:
        check_url(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None
    return raw


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def host(name: str, raw: str) -> str:
    """An IP address or a host name to bind (gunicorn would fail on anything else)."""
    try:
        ipaddress.ip_address(raw.strip("[]"))
        return raw
    except ValueError:
        pass
    if not _HOSTNAME.match(raw):
        raise SettingsError(f"{name} must be an IP address or a host name, got {raw!r}")
    return raw


def networks(name: str, raw: str) -> tuple[str, ...]:
    """A comma list of addresses or networks (`10.0.0.0/8`)."""
    items = comma_list(name, raw)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingsError(f"{name}: {item!r} is not an address or a network") from None
    return items


_ORIGIN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\s?#]+$")


def origins(name: str, raw: str) -> tuple[str, ...]:
    """A comma list of browser origins (`https://fonana.me`, no path: a browser's
    `Origin` never has one, so `https://fonana.me/` would match nothing), or `*`."""
    items = comma_list(name, raw)
    for item in items:
        if item != "*" and not _ORIGIN.match(item):
            raise SettingsError(f"{name}: {item!r} is not an origin like https://example.com (no path)")
    return items


# Redis keys are `<prefix>{<stream>}:m`: a brace in the prefix would move the hash tag
# (Redis Cluster slots), a space or control character breaks redis-cli and log lines.
_PREFIX = re.compile(r"^[A-Za-z0-9_.:/-]{1,100}$")


def redis_prefix(name: str, raw: str) -> str:
    if not _PREFIX.match(raw):
        raise SettingsError(f"{name} must be 1-100 of A-Z a-z 0-9 _ . : / -, got {raw!r}")
    return raw


def path(name: str, raw: str) -> str:
    if "\0" in raw:
        raise SettingsError(f"{name} must be a path")
    return raw


def setting(env: str, default, parse=text, *, blank_is_value: bool = False, embedded=None):
    """One knob: read from `env`; unset or blank -> `default` (unless `blank_is_value`:
    then an explicitly blank value is kept, e.g. LOG_DIR= means stdout only), or on the
    embedded default (not production) -> `embedded` when one is given."""
    meta = {"env": env, "parse": parse, "blank_is_value": blank_is_value}
    if embedded is not None:
        meta["embedded"] = embedded
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    # Every knob is checked here, before gunicorn forks a worker (gunicorn.conf.py): a value out
    # of range is one line and exit 1, never a traceback per worker or a worker that spins
    # (WS_PING_INTERVAL=-5 dropped every connection right after its welcome).
    # the embedded default holds dev secrets and demo data: this machine only unless WS_HOST
    # says otherwise (a laptop running it on a café network would serve it to everyone there)
    host: str = setting("WS_HOST", "0.0.0.0", host, embedded="127.0.0.1")
    port: int = setting("WS_PORT", 3002, between(1, 65535))
    database_url: str | None = setting("DATABASE_URL", None, url("postgresql", "postgres"))
    # PROTOCOL.md 10: one Redis (redis, rediss, unix), Sentinel, Cluster
    redis_url: str | None = setting("REDIS_URL", None, redis_url)
    redis_prefix: str = setting("REDIS_PREFIX", DEFAULT_PREFIX, redis_prefix)
    allowed_origins: tuple[str, ...] = setting("ALLOWED_ORIGINS", (), origins)     # empty = all
    data_dir: str = setting("DATA_DIR", "data", path)
    log_dir: str = setting("LOG_DIR", "logs", path, blank_is_value=True)
    log_level: str = setting("LOG_LEVEL", "info", one_of("debug", "info", "warning", "error"))
    # the console's lines (the files are JSON always); unset: logs.console_format decides
    log_format: str | None = setting("LOG_FORMAT", None, one_of("text", "json"))
    workers: int | None = setting("WS_WORKERS", None, between(1, 256))
    worker_connections: int = setting("WS_WORKER_CONNECTIONS", 10000, between(1, 1_000_000))
    ping_interval: float = setting("WS_PING_INTERVAL", 25.0, between(0.1, 3600, number))
    max_message_bytes: int = setting("WS_MAX_MESSAGE_BYTES", 65536, between(256, 16 * 1024 * 1024))
    rate_per_sec: float = setting("WS_RATE_PER_SEC", 20.0, between(0.01, 1_000_000, number))
    rate_burst: int = setting("WS_RATE_BURST", 40, between(1, 1_000_000))
    rate_abuse_seconds: float = setting("WS_RATE_ABUSE_SECONDS", 5.0, between(0.1, 3600, number))
    max_subscriptions: int = setting("WS_MAX_SUBSCRIPTIONS", 200, between(1, 100_000))
    max_connections_per_user: int = setting("WS_MAX_CONNECTIONS_PER_USER", 20, between(1, 1_000_000))
    # 0 disables the handshake limit per IP
    handshakes_per_ip_per_sec: float = setting("WS_HANDSHAKES_PER_IP_PER_SEC", 20.0,
                                               between(0, 1_000_000, number))
    handshakes_per_ip_burst: int = setting("WS_HANDSHAKES_PER_IP_BURST", 50, between(0, 1_000_000))
    trusted_proxies: tuple[str, ...] = setting("TRUSTED_PROXIES", (), networks)
    send_backlog_bytes: int = setting("WS_SEND_BACKLOG_BYTES", 1048576, between(1024, 1024 ** 3))
    send_backlog_frames: int = setting("WS_SEND_BACKLOG_FRAMES", 1000, between(1, 1_000_000))
    drain_seconds: float = setting("WS_DRAIN_SECONDS", 10.0, between(0, 3600, number))
    api_max_body_bytes: int = setting("API_MAX_BODY_BYTES", 1048576, between(1024, 64 * 1024 * 1024))
    api_max_events: int = setting("API_MAX_EVENTS", 1000, between(1, 100_000))
    metrics_public: bool = setting("METRICS_PUBLIC", False, flag)
    db_pool_size: int = setting("DB_POOL_SIZE", 10, between(1, 1000))
    user_cache_seconds: float = setting("WS_USER_CACHE_SECONDS", 5.0, between(0, 3600, number))
    # clock skew allowed on `exp`; PROTOCOL.md 2.1 caps it at 30 s
    jwt_leeway_seconds: int = setting("WS_JWT_LEEWAY_SECONDS", 10, between(0, 30))
    # legacy connections: least ms between two event frames of one type (PROTOCOL.md 8); 0 = off
    legacy_type_gap_ms: int = setting("WS_LEGACY_TYPE_GAP_MS", 200, between(0, 10_000))
    # legacy connections that dropped: how long where they left off is kept (PROTOCOL.md 8); 0 = off
    resume_seconds: float = setting("WS_RESUME_SECONDS", 120.0, between(0, 3600, number))
    # ... and at most this many streams' marks per user (resume_marks.py)
    resume_max_marks: int = setting("WS_RESUME_MAX_MARKS", 256, between(1, 100_000))
    # POST /api/notifications/push: how old a row the app wrote may be to be the one a push
    # names by its content (PROTOCOL.md 4.1); the routes push well within a second of writing
    push_match_seconds: float = setting("WS_PUSH_MATCH_SECONDS", 10.0, between(0, 3600, number))
    # presence (PROTOCOL.md 9): each worker copies its membership to Redis; 0 turns it off
    presence: bool = setting("WS_PRESENCE", True, flag)
    # POST /api/revoke holds this long: as long as a token can live (the app's: 30 days; PROTOCOL.md 9)
    revocation_seconds: float = setting("WS_REVOCATION_SECONDS", 2592000.0, between(60, 366 * 86400, number))
    # positions, history and recovery (PROTOCOL.md 7)
    history_size: int = setting("WS_HISTORY_SIZE", 100, between(0, 10_000))
    history_seconds: float = setting("WS_HISTORY_SECONDS", 300.0, between(0.1, 86400, number))
    history_meta_seconds: float = setting("WS_HISTORY_META_SECONDS", 86400.0, between(60, 30 * 86400, number))
    recovery_max: int = setting("WS_RECOVERY_MAX", 300, between(0, 100_000))
    # the in-process history's total bound (without REDIS_URL; history.py): streams, bytes
    history_max_streams: int = setting("WS_HISTORY_MAX_STREAMS", 100_000, between(1, 10_000_000))
    history_max_bytes: int = setting("WS_HISTORY_MAX_BYTES", 134217728, between(1048576, 64 * 1024 ** 3))
    # derived by `_secrets` (several variables, dev defaults), not read one to one
    jwt_secrets: tuple[str, ...] = ()
    api_secret: str | None = None
    production: bool = False        # DATABASE_URL or NODE_ENV/FONANA_ENV=production (`_is_production`)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def all_origins_allowed(self) -> bool:
        return not self.allowed_origins or "*" in self.allowed_origins


KNOBS = tuple(f for f in fields(Settings) if "env" in f.metadata)
# What the secrets and the production switch are derived from (`_secrets`, `_is_production`).
DERIVED_FROM = ("JWT_SECRET", "NEXTAUTH_SECRET", "WS_API_SECRET", "WS_ALLOW_WEAK_JWT_SECRET", "NODE_ENV",
                "FONANA_ENV")
# Every variable the server reads.
ENV_NAMES = tuple(k.metadata["env"] for k in KNOBS) + DERIVED_FROM


def _read(knob, env: dict[str, str]):
    meta = knob.metadata
    raw = env.get(meta["env"])
    if raw is None:
        return knob.default
    raw = raw.strip()
    if not raw:
        return "" if meta["blank_is_value"] else knob.default
    return meta["parse"](meta["env"], raw)


# HS256 keys shorter than the hash output (256 bits) are forgeable by brute force
# (RFC 7518 section 3.2); the API key is ours to choose, so it gets the same floor.
MIN_JWT_SECRET_BYTES = 32
MIN_API_SECRET_CHARS = 32


def _dev_secrets(data_dir: str) -> dict[str, str]:
    """The embedded default's own secrets, made once and kept in DATA_DIR so tokens
    minted by the CLI keep working across restarts. Never used with DATABASE_URL."""
    path = Path(data_dir) / "dev-secrets.json"
    if path.is_file():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    # 43 characters each: above both production floors
    values = {"jwt_secret": secrets.token_urlsafe(MIN_JWT_SECRET_BYTES),
              "api_secret": secrets.token_urlsafe(MIN_API_SECRET_CHARS)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(values, fh)
    return values


def _is_production(env: dict[str, str], database_url: str | None) -> bool:
    return bool(database_url) or "production" in (env.get("NODE_ENV", "").strip(),
                                                  env.get("FONANA_ENV", "").strip())


def _secrets(env: dict[str, str], production: bool, data_dir: str,
             warnings: list[str]) -> tuple[tuple[str, ...], str | None]:
    """(JWT secrets, API key). The Next.js signer uses JWT_SECRET first, then
    NEXTAUTH_SECRET: accept either. The production launch refuses weak ones; the
    embedded default makes its own strong ones."""
    named = [(n, env.get(n, "")) for n in ("JWT_SECRET", "NEXTAUTH_SECRET") if env.get(n, "")]
    jwt = [value for _, value in named]
    if len(jwt) == 2 and jwt[0] != jwt[1]:
        warnings.append("JWT_SECRET and NEXTAUTH_SECRET differ; tokens signed with either are accepted")
    jwt = list(dict.fromkeys(jwt))
    api_secret = env.get("WS_API_SECRET", "") or None
    weak_jwt = [n for n, value in named if len(value.encode()) < MIN_JWT_SECRET_BYTES]
    weak_api = api_secret is not None and len(api_secret) < MIN_API_SECRET_CHARS
    if production:
        if not jwt:
            raise SettingsError("no JWT secret: set JWT_SECRET or NEXTAUTH_SECRET "
                                "(required with DATABASE_URL or NODE_ENV=production)")
        if weak_jwt:
            # The Next.js app may already sign with a short secret: rotating it logs every
            # user out, so an explicit, loud escape hatch exists for the meantime.
            if not flag("WS_ALLOW_WEAK_JWT_SECRET", env.get("WS_ALLOW_WEAK_JWT_SECRET", "").strip() or "0"):
                raise SettingsError(f"{' and '.join(weak_jwt)} shorter than {MIN_JWT_SECRET_BYTES} bytes: "
                                    "HS256 tokens signed with it can be forged by brute force; use a longer "
                                    "secret (or set WS_ALLOW_WEAK_JWT_SECRET=1 while the Next.js app rotates)")
            warnings.append(f"WS_ALLOW_WEAK_JWT_SECRET=1: accepting {' and '.join(weak_jwt)} shorter than "
                            f"{MIN_JWT_SECRET_BYTES} bytes; tokens signed with it can be forged by brute force, "
                            "rotate it")
        if weak_api:
            raise SettingsError(f"WS_API_SECRET shorter than {MIN_API_SECRET_CHARS} characters: "
                                "use a long random key (python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
        if api_secret is None:
            warnings.append("WS_API_SECRET is not set: the HTTP API answers 503 until it is")
        return tuple(jwt), api_secret
    weak = weak_jwt + (["WS_API_SECRET"] if weak_api else [])
    if weak:
        warnings.append(f"{' and '.join(weak)} shorter than the production launch accepts "
                        "(it refuses them with DATABASE_URL)")
    if not jwt or api_secret is None:
        dev = _dev_secrets(data_dir)
        if not jwt:
            jwt = [dev["jwt_secret"]]
            warnings.append(f"embedded default: using the dev JWT secret kept in {data_dir}/dev-secrets.json")
        if api_secret is None:
            api_secret = dev["api_secret"]
    return tuple(jwt), api_secret


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read every setting; raise SettingsError with a one-line reason when a value is
    malformed or the production launch lacks what it needs."""
    env = _load_env() if env is None else env
    values = {knob.name: _read(knob, env) for knob in KNOBS}
    if values["history_meta_seconds"] < values["history_seconds"]:
        raise SettingsError("WS_HISTORY_META_SECONDS must be at least WS_HISTORY_SECONDS "
                            "(a stream's epoch and top must outlive its events)")
    production = _is_production(env, values["database_url"])
    if not production:
        values.update({knob.name: knob.metadata["embedded"] for knob in KNOBS
                       if "embedded" in knob.metadata and not (env.get(knob.metadata["env"]) or "").strip()})
    warnings: list[str] = []
    jwt_secrets, api_secret = _secrets(env, production, values["data_dir"], warnings)
    if not values["allowed_origins"] and production:
        warnings.append("ALLOWED_ORIGINS is not set: browser handshakes from every origin are accepted")
    return Settings(**values, jwt_secrets=jwt_secrets, api_secret=api_secret, production=production,
                    warnings=tuple(warnings))
