"""A private redis-server on a free port, for tests that stop and restart Redis.

`start()` waits until it answers PING; `stop()` kills it (SIGKILL: like a crash, clients
see their links reset); `restart()` brings it back on the same port. Nothing is saved to
disk, unless `appendonly=True`: then every write is in its append-only file before Redis
answers it (`appendfsync always`), so a SIGKILL loses nothing it acknowledged. Also `shared_redis()`: a client of the machine's Redis on 127.0.0.1:6379, or
of the one FONANA_TEST_REDIS_URL names (README "Testing").
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import redis
from websockets.exceptions import InvalidStatus

from .server import Server, free_port

SHARED_URL = os.environ.get("FONANA_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"


def client(url: str, **kw) -> redis.Redis:
    kw.setdefault("socket_timeout", 5)
    kw.setdefault("socket_connect_timeout", 5)
    return redis.Redis.from_url(url, protocol=2, **kw)


def shared_redis() -> redis.Redis:
    """The machine's Redis (scripts/ensure-services starts it); fails loudly if absent."""
    r = client(SHARED_URL)
    try:
        r.ping()
    except redis.RedisError as exc:
        raise AssertionError(f"Redis is not answering on {SHARED_URL} (run scripts/ensure-services): {exc}") from exc
    return r


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, *, appendonly: bool = False):
        self.appendonly = appendonly
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"redis-{self.port}.log"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not on PATH"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *(("--appendonly", "yes", "--appendfsync", "always") if self.appendonly else ("--appendonly", "no")),
             "--dir", str(self.workdir), "--daemonize", "no"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        r = client(self.url, socket_timeout=1, socket_connect_timeout=1)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server on {self.port} exited: {self.log_path.read_text()[-2000:]}")
            try:
                if r.ping():
                    r.close()
                    return self
            except redis.RedisError:
                pass
            time.sleep(0.02)        # polling a process that is starting: nothing to wait on
        self.stop()
        raise AssertionError(f"redis-server on {self.port} did not answer within {timeout}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None
        self._log.close()

    def restart(self) -> "RedisServer":
        self.stop()
        return self.start()

    def client(self, **kw) -> redis.Redis:
        return client(self.url, **kw)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextmanager
def hosts(tmp_path_factory, label: str, redis_url: str, workers: int, database_url: str | None = None,
          env: dict | None = None, names=("a", "b")):
    """Servers ("hosts": one gunicorn master each, `workers` gevent workers) sharing one
    Redis, one JWT secret and one API key, started together, stopped at the end."""
    jwt_secret, api_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    servers = [Server(tmp_path_factory.mktemp(f"{label}-{n}"), name=f"host-{n}", database_url=database_url,
                      jwt_secret=jwt_secret, api_key=api_key,
                      env={"REDIS_URL": redis_url, "WS_WORKERS": workers,
                           "WS_WORKER_CONNECTIONS": SPREAD_WORKER_CONNECTIONS, **(env or {})})
               for n in names]
    try:
        for srv in servers:
            srv.start(wait=False)
        for srv in servers:
            srv.wait_healthy()
        yield servers
    finally:
        for srv in servers:
            if srv.proc is not None:
                srv.stop()


# The kernel hands a shared listening socket's connections to gevent workers very
# unevenly (often all of them to one). A gevent worker stops accepting while its pool of
# WS_WORKER_CONNECTIONS request greenlets is full, so to reach the other workers we
# "plug" the favoured one: idle TCP connections that never send a request each hold a
# pool slot, are accepted mostly by the same favoured worker, and once it is full the
# next connections land elsewhere. Plugs are closed as soon as every worker is reached.
SPREAD_WORKER_CONNECTIONS = 10
PLUGS_PER_MISS = 4


def spread(servers, user_id: str, workers_per_server: int, attempts: int = 40, **connect) -> dict:
    """One connection of `user_id` on every worker of every server, keyed by
    (server name, worker pid) as the welcome frame names it; `connect`: Server.connect's
    options (subprotocols=[V2] for v2 clients)."""
    found, extra, plugs = {}, [], []
    want = workers_per_server * len(servers)
    try:
        for i in range(attempts):
            srv = servers[i % len(servers)]
            try:
                ws = srv.connect(user_id, **connect)
            except InvalidStatus as exc:
                # the favoured worker is full (503 worker_full): a miss like any other
                if exc.response.status_code != 503:
                    raise
                ws, where = None, None
            else:
                where = (srv.name, ws.welcome["data"]["worker"])
            if ws is None or where in found:
                if ws is not None:
                    extra.append(ws)
                for _ in range(PLUGS_PER_MISS):
                    plugs.append(socket.create_connection((srv.host, srv.port), timeout=5))
            else:
                found[where] = ws
            if len(found) == want:
                return found
        raise AssertionError(f"connections reached only {sorted(found)} in {attempts} tries")
    finally:
        for ws in extra:
            ws.close()
        for plug in plugs:
            plug.close()
