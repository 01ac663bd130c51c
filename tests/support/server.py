"""Start and stop real fonana-realtime servers: `gunicorn -c gunicorn.conf.py wsgi:app`.

Each server gets a free port, its own LOG_DIR and DATA_DIR, random secrets, and its
stdout/stderr captured to files (printed by conftest when a test fails).
"""
from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import requests

from fonana_realtime.settings import ENV_NAMES

from .tokens import make_token
from .ws import WSClient, open_ws

REPO = Path(__file__).resolve().parents[2]
AUTO = object()

# Every variable the server reads (settings.ENV_NAMES) and the launch's own: never
# inherited from the caller's environment, so a developer's shell cannot change what a
# test means.
CONFIG_VARS = ENV_NAMES + ("GUNICORN_CMD_ARGS", "FLASK_ENV", "FLASK_DEBUG", "ENV", "APP_ENV")

RUNNING: list["Server"] = []


# Where free_port() looks: below the kernel's ephemeral range (the source ports of
# outgoing connections). A port from that range (what bind(0) gives) can be taken at any
# moment by any process's outgoing connection: between free_port() and the server's bind,
# or while a test has a private Redis or PostgreSQL down and brings it back on the same
# port; a client retrying a port nobody listens on can even connect to itself (TCP
# simultaneous open) and hold it. Listeners picked here only meet other listeners.
LOW_PORT = 10000


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999                     # Linux's default


def free_port() -> int:
    """A 127.0.0.1 TCP port nobody listens on now, outside the ephemeral range when the
    kernel leaves room below it (else whatever bind(0) gives)."""
    low, _ = ephemeral_range()
    for _ in range(200):
        if low - LOW_PORT < 1000:
            break
        port = random.randrange(LOW_PORT, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL to everything in the session `proc` leads (started with start_new_session),
    then reap `proc`: what a test launched by hand leaves nothing running."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def gunicorn_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "gunicorn"
    conf = str(REPO / "gunicorn.conf.py")
    if exe.exists():
        return [str(exe), "-c", conf, "wsgi:app"]
    return [sys.executable, "-m", "gunicorn", "-c", conf, "wsgi:app"]


def clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS and not k.lower().endswith("_proxy")}
    env["PYTHONUNBUFFERED"] = "1"
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


class ServerStartError(AssertionError):
    pass


class Server:
    """One gunicorn master (+ its gevent worker) started by the suite."""

    def __init__(self, workdir: Path, *, name: str = "server", database_url: str | None = None,
                 jwt_secret=AUTO, api_key=AUTO, nextauth_secret: str | None = None,
                 env: dict | None = None, cwd: Path | None = None, command: list[str] | None = None):
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.log_dir = self.workdir / "logs"
        self.data_dir.mkdir(exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self.stdout_path = self.workdir / "stdout.txt"
        self.stderr_path = self.workdir / "stderr.txt"
        self.port = free_port()
        self.host = "127.0.0.1"
        self.base_url = f"http://{self.host}:{self.port}"
        self.ws_url = f"ws://{self.host}:{self.port}/ws"
        self.jwt_secret = secrets.token_urlsafe(32) if jwt_secret is AUTO else jwt_secret
        self.api_key = secrets.token_urlsafe(32) if api_key is AUTO else api_key
        self.nextauth_secret = nextauth_secret
        self.database_url = database_url
        config = {
            "WS_HOST": self.host,
            "WS_PORT": self.port,
            "LOG_DIR": self.log_dir,
            "DATA_DIR": self.data_dir,
            "WS_WORKERS": 1,
            # the suite opens hundreds of handshakes from 127.0.0.1 in a few seconds
            "WS_HANDSHAKES_PER_IP_PER_SEC": 0,
            "JWT_SECRET": self.jwt_secret,
            "NEXTAUTH_SECRET": nextauth_secret,
            "WS_API_SECRET": self.api_key,
            "DATABASE_URL": database_url,
            # tests of raw delivery semantics expect every frame at once; the browser tests
            # (test_browser_legacy.py) pass None to run with the server's own default
            "WS_LEGACY_TYPE_GAP_MS": 0,
            "WS_RESUME_SECONDS": 0,         # likewise: no replays a test did not ask for
        }
        config.update(env or {})
        self.env = clean_env(config)
        # the launch directory: the repository, as in production, unless a test needs its own
        # (`.env` files are read from it and from its parent)
        self.cwd = Path(cwd) if cwd else REPO
        if cwd:
            self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), self.env.get("PYTHONPATH")) if p)
        # the launch command; the suite's own venv unless a test brings another install
        self.command = command or gunicorn_cmd()
        self.proc: subprocess.Popen | None = None
        self.clients: list[WSClient] = []
        self.http = requests.Session()
        self.http.trust_env = False

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, *, wait: bool = True, timeout: float = 30.0) -> "Server":
        self._out = open(self.stdout_path, "ab")
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=self._out, stderr=self._err,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        RUNNING.append(self)
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"{self.name} exited with {self.proc.returncode} before /health answered\n"
                                       + self.output_tail())
            try:
                r = self.http.get(self.base_url + "/health", timeout=2, headers={"Connection": "close"})
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as exc:
                last = repr(exc)
            # polling a process that is starting up: a pause between attempts is the only option
            time.sleep(0.1)
        self.stop()
        raise ServerStartError(f"{self.name}: /health not 200 within {timeout}s (last: {last})\n" + self.output_tail())

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL of the process group after the deadline. Returns the exit code."""
        self.close_clients()
        # an idle keep-alive HTTP connection would hold the worker's graceful exit open
        self.http.close()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # the group is the session gunicorn was started in: the master and its workers only
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        rc = self.proc.wait(10)
        for f in (self._out, self._err):
            f.close()
        if self in RUNNING:
            RUNNING.remove(self)
        return rc

    # -- logs -------------------------------------------------------------------------
    def output(self) -> str:
        parts = []
        for p in (self.stdout_path, self.stderr_path, *sorted(self.log_dir.glob("*"))):
            if p.is_file():
                parts.append(p.read_text(errors="replace"))
        return "\n".join(parts)

    def output_tail(self, lines: int = 60) -> str:
        out = []
        for p in (self.stdout_path, self.stderr_path):
            if p.is_file():
                text = p.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"----- {self.name} {p.name} (last {lines} lines) -----\n" + "\n".join(text))
        return "\n".join(out)

    # -- clients ------------------------------------------------------------------------
    def token(self, user_id: str | None = None, **kw) -> str:
        return make_token(self.jwt_secret, user_id, **kw)

    def url(self, token: str | None = None, path: str = "/ws") -> str:
        base = f"ws://{self.host}:{self.port}{path}"
        return base if token is None else f"{base}?token={quote(token, safe='')}"

    def connect(self, user_id: str | None = None, *, token: str | None = None, path: str = "/ws",
                welcome: bool = True, **kw) -> WSClient:
        """A connection for `user_id` (token in the query, as the browser client does)."""
        if token is None:
            token = self.token(user_id)
        client = open_ws(self.url(token, path), welcome=welcome, **kw)
        if welcome and user_id is not None:
            assert client.welcome["data"]["userId"] == user_id, f"welcome for another user: {client.welcome!r}"
        self.clients.append(client)
        return client

    def close_clients(self) -> None:
        while self.clients:
            self.clients.pop().close()

    def api(self, path: str, body=None, *, key=AUTO, method: str = "POST", raw: bytes | str | None = None,
            headers: dict | None = None) -> requests.Response:
        # no keep-alive: an idle kept-alive connection holds a stopping worker open for seconds
        h = {"Connection": "close"}
        k = self.api_key if key is AUTO else key
        if k is not None:
            h["Authorization"] = f"Bearer {k}"
        if raw is not None:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        kwargs = {"data": raw} if raw is not None else ({"json": body} if body is not None else {})
        return self.http.request(method, self.base_url + path, headers=h, timeout=15, **kwargs)

    def publish(self, body: dict) -> requests.Response:
        r = self.api("/api/events", body)
        assert r.status_code == 202, f"POST /api/events {body!r} -> {r.status_code} {r.text[:500]}"
        return r

    def get(self, path: str, **kw) -> requests.Response:
        headers = {"Connection": "close", **kw.pop("headers", {})}
        return self.http.get(self.base_url + path, timeout=15, headers=headers, **kw)


def wsgi_present() -> bool:
    return (REPO / "wsgi.py").is_file() and (REPO / "gunicorn.conf.py").is_file()


class ServerFactory:
    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.servers: list[Server] = []

    def create(self, name: str = "extra", **kw) -> Server:
        """A configured, not yet started server (for tests that watch the launch itself)."""
        srv = Server(self.tmp_path_factory.mktemp(name), name=name, **kw)
        self.servers.append(srv)
        return srv

    def start(self, name: str = "extra", **kw) -> Server:
        return self.create(name, **kw).start()

    def stop_all(self) -> None:
        while self.servers:
            srv = self.servers.pop()
            if srv.proc is not None:
                srv.stop()
