"""Helpers of the production-hardening tests (limits, JWT attacks, fuzz, token lifetime,
slow clients, metrics).

Everything still talks to real things: gunicorn with gevent workers, real sockets.
Where the server gives no event to wait for (a counter in /metrics, a slot freed after a
close), `support.waiting.wait_until` polls with a deadline; nothing sleeps to synchronise.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import time
from urllib.parse import quote

from prometheus_client.parser import text_string_to_metric_families

from .rawws import RawWebSocket
from .server import Server


# -- servers -------------------------------------------------------------------------------

@contextlib.contextmanager
def running_server(tmp_path_factory, name: str, *, database_url: str | None = None, env: dict | None = None,
                   **kw):
    """One real gunicorn for a module, stopped at the end. The keep-alive HTTP session is
    closed first so gunicorn does not wait out its keep-alive timeout on shutdown."""
    srv = Server(tmp_path_factory.mktemp(name), name=name, database_url=database_url, env=env, **kw)
    srv.start()
    try:
        yield srv
    finally:
        srv.close_clients()
        srv.http.close()
        srv.stop(timeout=10)


# -- metrics --------------------------------------------------------------------------------

def scrape(srv: Server, *, key: str | None = "auto") -> dict:
    """/metrics parsed into {(sample name, frozenset(labels without pid)): value}."""
    headers = {}
    k = srv.api_key if key == "auto" else key
    if k is not None:
        headers["Authorization"] = f"Bearer {k}"
    r = srv.get("/metrics", headers=headers)
    assert r.status_code == 200, f"/metrics -> {r.status_code} {r.text[:300]}"
    out: dict = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = frozenset((k, v) for k, v in s.labels.items() if k != "pid")
            out[(s.name, labels)] = out.get((s.name, labels), 0.0) + s.value
    return out


def metric(samples: dict, name: str, **labels) -> float:
    """The value of one sample (0.0 when absent: a counter never bumped is not exported)."""
    want = frozenset((k, str(v)) for k, v in labels.items())
    return samples.get((name, want), 0.0)


def metric_total(servers, name: str, **labels) -> float:
    """Scrape and add up: every sample of `name` whose labels include `labels`, over one
    server or several (all workers of each aggregated by its /metrics)."""
    servers = [servers] if hasattr(servers, "get") else servers
    want = frozenset((k, str(v)) for k, v in labels.items())
    return sum(value for srv in servers for (sample, got), value in scrape(srv).items()
               if sample == name and want <= got)


def metric_sum(samples: dict, name: str) -> float:
    """The sum of every labelled sample of `name` (all channel types, all reasons...)."""
    return sum(v for (n, _), v in samples.items() if n == name)


# -- raw sockets ----------------------------------------------------------------------------

def raw_connect(srv: Server, token: str, *, rcvbuf: int | None = None) -> RawWebSocket:
    raw = RawWebSocket(srv.host, srv.port, f"/ws?token={quote(token, safe='')}", rcvbuf=rcvbuf)
    raw.recv_json_until("connected")
    return raw


def raw_http(srv: Server, request: bytes, timeout: float = 10.0) -> tuple[int | None, bytes]:
    """Send bytes as-is and read the answer until the server closes or the head and a
    Content-Length body are in. Returns (status or None if it just hung up, raw answer)."""
    with socket.create_connection((srv.host, srv.port), timeout=timeout) as s:
        try:
            s.sendall(request)
        except OSError:
            pass          # the server may refuse and hang up before we finished writing
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                break
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                if head.split(b" ", 2)[1:2] == [b"101"]:
                    break         # upgraded: there is no body to wait for
                length = None
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length is not None and len(body) >= length:
                    break
    if not data.startswith(b"HTTP/"):
        return None, data
    return int(data.split(b" ", 2)[1]), data


def upgrade_request(srv: Server, target: str, headers: dict | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"GET {target} HTTP/1.1\r\nHost: {srv.host}:{srv.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{extra}\r\n").encode()


# -- attacker keys (cryptography) -------------------------------------------------------------

_KEYS: dict = {}


def rsa_key():
    """An attacker's RSA private key (made once per test run)."""
    if "rsa" not in _KEYS:
        from cryptography.hazmat.primitives.asymmetric import rsa
        _KEYS["rsa"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEYS["rsa"]


def ec_key():
    """An attacker's P-256 private key (made once per test run)."""
    if "ec" not in _KEYS:
        from cryptography.hazmat.primitives.asymmetric import ec
        _KEYS["ec"] = ec.generate_private_key(ec.SECP256R1())
    return _KEYS["ec"]


def ed_key():
    if "ed" not in _KEYS:
        from cryptography.hazmat.primitives.asymmetric import ed25519
        _KEYS["ed"] = ed25519.Ed25519PrivateKey.generate()
    return _KEYS["ed"]


def public_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def iso_ms(ts: float) -> str:
    """A unix time as the server writes it: ISO-8601 UTC with milliseconds and Z."""
    import datetime as dt
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def signed_token(payload: dict, key: bytes, *, header: dict | None = None, alg: str = "HS256") -> str:
    """An HMAC-signed JWT assembled by hand: any key (empty included, which PyJWT refuses to
    use) and any extra header fields (`kid`, `jku`, ...)."""
    import hashlib
    import hmac
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    head = {"alg": alg, "typ": "JWT", **(header or {})}
    signing_input = ".".join((b64url(json.dumps(head, separators=(",", ":")).encode()),
                              b64url(json.dumps(payload, separators=(",", ":")).encode())))
    return signing_input + "." + b64url(hmac.new(key, signing_input.encode(), digest).digest())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def spread_connections(srv: Server, user: str, workers: int = 2, batch: int = 6, seconds: float = 15.0) -> dict:
    """{worker pid: [connections]} covering `workers` distinct workers (the welcome frame
    names its worker). Which worker accepts is the kernel's choice: open concurrent
    batches until enough workers have answered, bounded by `seconds`."""
    from concurrent.futures import ThreadPoolExecutor
    kept: dict = {}
    deadline = time.monotonic() + seconds
    with ThreadPoolExecutor(batch) as pool:
        while len(kept) < workers:
            if time.monotonic() > deadline:
                raise AssertionError(f"connections reached only workers {sorted(kept)} within {seconds}s")
            for ws in pool.map(lambda _: srv.connect(user), range(batch)):
                pid = ws.welcome["data"].get("worker")
                assert pid is not None, ws.welcome
                if len(kept.setdefault(pid, [])) < 2:
                    kept[pid].append(ws)
                else:
                    srv.clients.remove(ws)
                    ws.close()
    return kept
