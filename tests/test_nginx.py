"""The deploy files (issue 4, point 13): nginx for real in front of a real server,
plus checks of the systemd unit and .env.example against the code.

nginx comes from the system packages (scripts/ensure-services installs it); it runs
config/nginx/fonana-realtime.conf itself, with only ports and log paths swapped
(tests/support/nginx.py), in the foreground on a free 127.0.0.1 port.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import ssl
from dotenv import dotenv_values

from support.nginx import SITE_CONF, WS_SNIPPET, Nginx, nginx_binary
from support.waiting import wait_until
from support.server import REPO, Server, clean_env, free_port
from support.ws import open_ws

SPOOFED = "203.0.113.7"          # TEST-NET-3: what a client claims in X-Forwarded-For
OTHER_LOOPBACK = "127.0.0.2"     # a second loopback address: not in TRUSTED_PROXIES

needs_nginx = pytest.mark.skipif(nginx_binary() is None,
                                 reason="nginx is not installed (scripts/ensure-services installs nginx-light "
                                        "with apt-get); the live nginx tests cannot run")


# -- the running stack: server + nginx from the repo's site file ------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_url):
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (scripts/ensure-services installs it with apt-get)")
    server = Server(tmp_path_factory.mktemp("behind-nginx"), name="behind-nginx", database_url=pg_url,
                    env={"TRUSTED_PROXIES": "127.0.0.1"})
    server.start()
    nginx = None
    try:
        nginx = Nginx(tmp_path_factory.mktemp("nginx"), upstream_port=server.port).start()
        yield server, nginx
    finally:
        if nginx is not None:
            nginx.stop()
        server.stop()


def _ws_url(nginx: Nginx, token: str) -> str:
    return f"{nginx.ws_base}/ws?token={quote(token, safe='')}"


def _log_lines(server: Server) -> list[dict]:
    path = server.log_dir / "ws-combined.log"
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _connected_line(server: Server, client) -> dict:
    conn_id = client.welcome["data"]["connectionId"]
    user_id = client.welcome["data"]["userId"]

    def find():
        for rec in _log_lines(server):
            if rec.get("event") == "connected" and rec.get("conn_id") == conn_id and rec.get("user_id") == user_id:
                return rec
        return None
    return wait_until(find, 10, f"the `connected` log line of connection {conn_id}")


def _other_loopback_usable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3, source_address=(OTHER_LOOPBACK, 0)):
            return True
    except OSError:
        return False


@pytest.mark.postgres
@needs_nginx
def test_websocket_session_through_nginx(stack, seed):
    server, nginx = stack
    assert nginx.get("/health").status_code == 200
    r = nginx.get("/ready")
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert nginx.get("/something-else").status_code == 404

    _session(server, nginx, seed, lambda token: _ws_url(nginx, token))


def _session(server, nginx, seed, url, **ws_options):
    """A user connects at `url(token)`, subscribes to a post, gets the like published
    through nginx's /api/, and answers a ping."""
    user = seed.user()
    creator = seed.user(is_creator=True)
    post = seed.post(creator)
    client = open_ws(url(server.token(user)), **ws_options)
    try:
        assert client.welcome["data"]["userId"] == user, client.welcome
        client.subscribe({"type": "post", "postId": post}, key=f"post_{post}")
        event = {"type": "post_liked", "postId": post, "userId": creator, "likesCount": 3}
        r = nginx.post("/api/events", json={"event": event}, headers={"Authorization": f"Bearer {server.api_key}"})
        assert r.status_code == 202, (r.status_code, r.text[:300])
        client.expect_event(event)
        client.ping()
    finally:
        client.close()


@pytest.mark.postgres
@needs_nginx
def test_the_apps_own_url_wss_host_3002_ws(stack, seed):
    """The Fonana app's browser client connects to wss://<page host>:3002/ws
    (lib/services/websocket.ts): the site file's second server block takes TLS on port 3002
    of the public address (here a free port on 127.0.0.1, with a certificate made for the run)
    and serves /ws there, and only /ws."""
    server, nginx = stack
    tls = ssl.create_default_context(cafile=str(nginx.cert))
    _session(server, nginx, seed, lambda token: f"{nginx.wss_base}/ws?token={quote(token, safe='')}", ssl=tls)
    # the API, metrics and the rest stay on the internal side
    for path in ("/api/events", "/metrics", "/health", "/"):
        r = nginx.http.get(f"https://127.0.0.1:{nginx.tls_port}{path}", verify=str(nginx.cert), timeout=15,
                           headers={"Authorization": f"Bearer {server.api_key}"})
        assert r.status_code == 404, (path, r.status_code)


@pytest.mark.postgres
@needs_nginx
def test_client_ip_is_the_one_nginx_forwarded(stack, seed):
    """The client claims X-Forwarded-For: 203.0.113.7; nginx appends the peer it saw.

    From 127.0.0.1 the server gets `203.0.113.7, 127.0.0.1` from the trusted peer 127.0.0.1:
    the rightmost hop that is not a trusted proxy is 203.0.113.7 (127.0.0.1 is in
    TRUSTED_PROXIES, so a client on it counts as one more proxy). From 127.0.0.2, an
    untrusted address, the header says `203.0.113.7, 127.0.0.2` and the server logs
    127.0.0.2: a client cannot choose its own address. See docs/DEPLOY.md.
    """
    server, nginx = stack
    user = seed.user()
    client = open_ws(_ws_url(nginx, server.token(user)), headers={"X-Forwarded-For": SPOOFED})
    try:
        assert _connected_line(server, client)["ip"] == SPOOFED
    finally:
        client.close()

    if not _other_loopback_usable(nginx.port):
        pytest.skip(f"cannot connect from {OTHER_LOOPBACK} on this machine")
    client = open_ws(_ws_url(nginx, server.token(user)), headers={"X-Forwarded-For": SPOOFED},
                     source_address=(OTHER_LOOPBACK, 0))
    try:
        assert _connected_line(server, client)["ip"] == OTHER_LOOPBACK
    finally:
        client.close()


@pytest.mark.postgres
@needs_nginx
def test_api_through_nginx_is_for_internal_addresses_only(stack, seed):
    server, nginx = stack
    if not _other_loopback_usable(nginx.port):
        pytest.skip(f"cannot connect from {OTHER_LOOPBACK} on this machine")
    user = seed.user()
    client = open_ws(_ws_url(nginx, server.token(user)))
    try:
        event = {"type": "notifications_cleared", "userId": user}
        conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10, source_address=(OTHER_LOOPBACK, 0))
        try:
            conn.request("POST", "/api/events", body=json.dumps({"event": event}),
                         headers={"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 403, resp.status
            conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {server.api_key}"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 403, resp.status
        finally:
            conn.close()
        client.barrier()      # the refused event was not delivered
        r = nginx.post("/api/events", json={"event": event}, headers={"Authorization": f"Bearer {server.api_key}"})
        assert r.status_code == 202, (r.status_code, r.text[:300])
        client.expect_event(event)
    finally:
        client.close()


@pytest.mark.postgres
@needs_nginx
def test_nginx_access_log_has_no_query_string(stack, seed):
    server, nginx = stack
    user = seed.user()
    token = server.token(user)
    client = open_ws(_ws_url(nginx, token))
    client.close()      # nginx writes a WebSocket's access line when it ends

    def ws_lines():
        lines = [l for l in nginx.access_lines() if '"GET /ws' in l and '" 101 ' in l]
        return lines or None
    wait_until(ws_lines, 10, "a 101 line for /ws in nginx's access log")
    text = "\n".join(nginx.access_lines())
    assert "?" not in text, text
    assert "token" not in text, text
    for log in nginx.log_dir.glob("*"):
        body = log.read_text(errors="replace")
        assert token not in body and token.split(".")[2] not in body, f"the token is in nginx's {log.name}"


@needs_nginx
def test_upstream_errors_do_not_put_the_token_in_nginx_error_log(tmp_path_factory):
    """With the upstream down, nginx logs `connect() failed ... request: "GET ...?..."`:
    the site file keeps /ws out of the error log (crit level) so the token stays out."""
    nginx = Nginx(tmp_path_factory.mktemp("nginx-no-upstream"), upstream_port=free_port())
    nginx.start(health_status=502)
    try:
        token = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VySWQiOiJ4In0.c2lnbmF0dXJlLXRoYXQtbXVzdC1ub3QtbGVhaw"
        r = nginx.get("/ws?token=" + token, headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                                     "Sec-WebSocket-Version": "13",
                                                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert r.status_code == 502, r.status_code
        error_log = nginx.log_dir / "fonana-realtime.error.log"
        # the /health failure is logged: the error log works, so the next check means something
        wait_until(lambda: "GET /health" in error_log.read_text(errors="replace"), 10,
                   "nginx logging the failed /health")
        wait_until(lambda: any('"GET /ws' in l and '" 502 ' in l for l in nginx.access_lines()), 10,
                   "the 502 for /ws in the access log")
    finally:
        nginx.stop()
    for log in nginx.log_dir.glob("*"):
        body = log.read_text(errors="replace")
        assert token not in body and "c2lnbmF0dXJl" not in body, f"the token is in nginx's {log.name}:\n{body}"
        assert "/ws?" not in body, f"a /ws query string is in nginx's {log.name}:\n{body}"


# -- static checks of the deploy files against the code -----------------------------------

def _location_block(conf: str, header: str) -> str:
    start = conf.index(header)
    depth, i = 0, conf.index("{", start)
    for j in range(i, len(conf)):
        depth += {"{": 1, "}": -1}.get(conf[j], 0)
        if depth == 0:
            return conf[i:j + 1]
    raise AssertionError(f"unterminated block {header!r}")


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert m, value
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]


def test_nginx_site_file_keeps_websockets_alive_and_tokens_out():
    from fonana_realtime.settings import Settings
    conf = SITE_CONF.read_text().replace(f"include snippets/{WS_SNIPPET.name};", WS_SNIPPET.read_text())
    code = "\n".join(l.split("#", 1)[0] for l in conf.splitlines())   # directives only
    assert code.count("location = /ws") == 2, "both layouts serve /ws"
    ws = _location_block(code, "location = /ws")
    timeout = re.search(r"proxy_read_timeout\s+(\w+);", ws)
    assert timeout and _seconds(timeout.group(1)) > Settings().ping_interval, ws
    assert "proxy_http_version 1.1;" in ws
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", ws)
    assert re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", ws)
    assert re.search(r"map\s+\$http_upgrade\s+\$connection_upgrade", code)
    fmt = re.search(r"log_format\s+(\w+)\s+(.*?);", code, re.S)
    assert fmt and "$uri" in fmt.group(2), fmt
    for leaky in ("$request ", "$request\"", "$request'", "$request_uri", "$args", "$query_string", "$arg_"):
        assert leaky not in fmt.group(2), f"the access log format contains {leaky}"
    assert re.search(rf"access_log\s+\S+\s+{fmt.group(1)}\s*;", code), "the access log must use that format"
    api = _location_block(code, "location /api/")
    assert re.search(r"deny\s+all;", api), api
    for net in ("127.0.0.1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"):
        assert re.search(rf"allow\s+{re.escape(net)};", api), net


def test_systemd_unit(tmp_path):
    unit = (REPO / "config" / "systemd" / "fonana-realtime.service").read_text()
    values: dict[str, str] = {}
    for line in unit.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            k, v = line.split("=", 1)
            values[k.strip()] = v.strip()
    assert re.search(r"gunicorn -c gunicorn\.conf\.py wsgi:app$", values["ExecStart"]), values["ExecStart"]
    assert values["ExecStart"].startswith("/"), "systemd needs an absolute ExecStart"
    assert "EnvironmentFile" in values
    assert values["KillSignal"] == "SIGTERM"
    assert values["Restart"] == "on-failure"
    assert values["LimitNOFILE"] == "65536"
    assert values.get("User") not in (None, "", "root", "0")
    # systemd must not SIGKILL before gunicorn's own graceful_timeout has run out
    graceful = _gunicorn_setting(tmp_path, "graceful_timeout")
    assert _seconds(values["TimeoutStopSec"]) > graceful, (values["TimeoutStopSec"], graceful)


def _gunicorn_setting(tmp_path: Path, name: str):
    """A value of gunicorn.conf.py as gunicorn computes it (run in a child with default settings)."""
    env = clean_env({"DATA_DIR": tmp_path / "data", "LOG_DIR": tmp_path / "logs", "JWT_SECRET": "x" * 32,
                     "WS_API_SECRET": "y" * 32, "PROMETHEUS_MULTIPROC_DIR": tmp_path})
    code = f"import runpy; print(repr(runpy.run_path('gunicorn.conf.py')[{name!r}]))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.strip().splitlines()[-1])


# PROTOCOL.md section 1, both tables.
PROTOCOL_VARS = {
    "WS_PORT", "WS_HOST", "NEXTAUTH_SECRET", "JWT_SECRET", "DATABASE_URL", "REDIS_URL", "WS_API_SECRET",
    "ALLOWED_ORIGINS", "WS_WORKERS", "WS_WORKER_CONNECTIONS", "WS_PING_INTERVAL", "WS_MAX_MESSAGE_BYTES",
    "WS_RATE_PER_SEC", "WS_RATE_BURST", "WS_RATE_ABUSE_SECONDS", "WS_MAX_SUBSCRIPTIONS",
    "WS_MAX_CONNECTIONS_PER_USER", "WS_HANDSHAKES_PER_IP_PER_SEC", "WS_HANDSHAKES_PER_IP_BURST",
    "TRUSTED_PROXIES", "WS_SEND_BACKLOG_BYTES", "WS_SEND_BACKLOG_FRAMES", "WS_DRAIN_SECONDS",
    "API_MAX_BODY_BYTES", "API_MAX_EVENTS", "METRICS_PUBLIC", "REDIS_PREFIX", "LOG_DIR",
}


def test_env_example_lists_every_setting_with_its_default(tmp_path):
    from fonana_realtime.settings import load_settings
    path = REPO / ".env.example"
    text = path.read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.M))
    read_by_code = set(re.findall(r"\"([A-Z][A-Z0-9_]{2,})\"", (REPO / "fonana_realtime" / "settings.py").read_text()))
    missing = (PROTOCOL_VARS | read_by_code) - listed
    assert not missing, f".env.example does not mention {sorted(missing)}"
    values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    for secret in ("JWT_SECRET", "NEXTAUTH_SECRET", "WS_API_SECRET"):
        assert not values.get(secret), f".env.example must not hold a value for {secret}"
    # every value written out is the code's own default
    base = {"DATA_DIR": str(tmp_path), "JWT_SECRET": "x" * 32, "WS_API_SECRET": "y" * 32}
    example = load_settings({**values, **base})
    default = load_settings(base)
    assert example == default, "a value in .env.example differs from the default in settings.py"
