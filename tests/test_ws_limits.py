"""Limits of PROTOCOL.md 1 and 2: connections per user and handshakes per IP (429 before the
upgrade), subscriptions per connection (`too_many_subscriptions`), the command rate
(`rate_limited`, then close 4008 when sustained), and the slow reader (close 4009)
that must not hold up delivery to anyone else.

The limits are made small through their env vars so each is reached in a few frames.
"""
import json
import socket
import time

import pytest

from support.rawws import OP_CLOSE, OP_TEXT, RawWebSocket
from support.server import ServerFactory
from support.ws import open_ws, refused_handshake

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def limited(tmp_path_factory, pg_url):
    factory = ServerFactory(tmp_path_factory)
    srv = factory.start("limits", database_url=pg_url, env={
        "WS_MAX_CONNECTIONS_PER_USER": 2,
        "WS_MAX_SUBSCRIPTIONS": 3,
        "WS_RATE_PER_SEC": 5,
        "WS_RATE_BURST": 10,
        "WS_RATE_ABUSE_SECONDS": 1,
        "WS_SEND_BACKLOG_BYTES": 65536,
        "WS_SEND_BACKLOG_FRAMES": 50,
        "API_MAX_EVENTS": 40,
        "METRICS_PUBLIC": 1,
    })
    yield srv
    factory.stop_all()


def test_too_many_connections_for_one_user_is_429(limited, seed):
    uid = seed.user()
    a, b = limited.connect(uid), limited.connect(uid)
    r = refused_handshake(limited.url(limited.token(uid)))
    assert r.status == 429, (r.status, r.body[:300])
    assert r.json(), r.body
    # another user is not affected
    limited.connect(seed.user()).ping()
    a.ping()
    b.ping()


def test_closing_a_connection_frees_its_place(limited, seed):
    uid = seed.user()
    a, b = limited.connect(uid), limited.connect(uid)
    a.close()
    # the server notices the close on its own schedule: poll with real handshakes
    deadline = time.monotonic() + 10
    while True:
        try:
            c = limited.connect(uid)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # polling a state the server exposes only through handshakes
    c.ping()
    b.ping()


def test_too_many_subscriptions(limited, seed):
    uid = seed.user()
    ws = limited.connect(uid)
    for i in range(3):
        ws.subscribe({"type": "creator", "id": f"c{i}"})
    ws.send_json({"type": "subscribe", "channel": {"type": "creator", "id": "c3"}})
    ws.expect_error("too_many_subscriptions", "Failed to subscribe")
    ws.unsubscribe({"type": "creator", "id": "c0"})
    ws.subscribe({"type": "creator", "id": "c3"})
    ws.barrier()


def test_rate_limited_commands_get_an_error_and_the_connection_lives(limited, seed):
    ws = limited.connect(seed.user())
    for _ in range(14):
        ws.send_json({"type": "ping"})
    frames = [ws.recv_json() for _ in range(14)]
    limited_errors = [f for f in frames if f.get("type") == "error"]
    assert limited_errors, f"14 commands against a burst of 10 were all served: {frames}"
    for f in limited_errors:
        assert f["data"].get("code") == "rate_limited", f
        assert isinstance(f["data"].get("message"), str) and f["data"]["message"], f
    assert [f for f in frames if f.get("type") == "pong"], frames
    assert ws.is_open


def test_sustained_flood_is_closed_4008(limited, seed):
    ws = limited.connect(seed.user())
    from websockets.exceptions import ConnectionClosed
    deadline = time.monotonic() + 20
    code = "still open"
    try:
        while time.monotonic() < deadline:
            ws.send_json({"type": "ping"})
            try:
                while True:
                    ws.recv_raw(timeout=0.001)
            except TimeoutError:
                pass
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
    assert code == 4008, f"flooding for 20 s ended with {code!r}"


def test_slow_reader_is_closed_4009_and_others_keep_receiving(limited, seed):
    creator = seed.user()
    post = seed.post(creator)
    channel = {"type": "post", "postId": post}
    healthy = limited.connect(seed.user())
    healthy.subscribe(channel)

    # a raw client with a tiny receive buffer that stops reading after the handshake
    slow_user = seed.user()
    raw = _raw_with_small_buffer(limited, slow_user)
    try:
        op, payload = raw.recv_frame()
        assert op == OP_TEXT and json.loads(payload)["type"] == "connected"
        raw.send_frame(OP_TEXT, json.dumps({"type": "subscribe", "channel": channel}).encode())
        op, payload = raw.recv_frame()
        assert json.loads(payload)["type"] == "subscribed", payload

        blob = "x" * 32000
        published = 0
        for batch in range(12):  # ~11 MB: more than every kernel buffer plus the backlog
            events = [{"type": "post_liked", "postId": post, "userId": creator, "likesCount": batch * 30 + i,
                       "blob": blob} for i in range(30)]
            r = limited.api("/api/events", {"events": events})
            assert r.status_code == 202, (r.status_code, r.text[:300])
            published += len(events)
            # the healthy subscriber keeps up: it is not held back by the slow one
            for event in events:
                healthy.expect_event(event)
        healthy.barrier()

        received, closed = 0, None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                op, payload = raw.recv_frame(timeout=max(0.05, deadline - time.monotonic()))
            except (EOFError, ConnectionResetError):
                closed = "eof"
                break
            except TimeoutError:
                break
            if op == OP_CLOSE:
                closed = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else "close frame"
                break
            if op == OP_TEXT:
                received += 1
        assert closed in ("eof", 4009), f"slow reader not dropped (got {closed!r}, {received} events read)"
        assert received < published, "the slow reader got everything: the test did not overflow anything"
    finally:
        raw.close()


def _raw_with_small_buffer(srv, user):
    """RawWebSocket whose socket has a 4 KiB receive buffer set before connecting."""
    import base64
    import os
    raw = RawWebSocket.__new__(RawWebSocket)
    raw.buf = b""
    raw.sock = socket.socket()
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.sock.settimeout(10)
    raw.sock.connect((srv.host, srv.port))
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sock.sendall((f"GET /ws?token={srv.token(user)} HTTP/1.1\r\nHost: {srv.host}:{srv.port}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    while b"\r\n\r\n" not in raw.buf:
        chunk = raw.sock.recv(4096)
        assert chunk, raw.buf
        raw.buf += chunk
    head, raw.buf = raw.buf.split(b"\r\n\r\n", 1)
    assert b" 101 " in head.split(b"\r\n", 1)[0] + b" ", head
    return raw


# -- handshakes per client IP ------------------------------------------------------------------

def test_too_many_handshakes_from_one_ip_is_429(server_factory, pg_url, seed):
    uid = seed.user()
    srv = server_factory.start("handshake-limit", database_url=pg_url,
                               env={"WS_HANDSHAKES_PER_IP_PER_SEC": 1, "WS_HANDSHAKES_PER_IP_BURST": 3})
    statuses = []
    for _ in range(8):
        try:
            with open_ws(srv.url(srv.token(uid))):
                statuses.append(101)
        except AssertionError:
            raise
        except Exception as exc:
            statuses.append(getattr(getattr(exc, "response", None), "status_code", repr(exc)))
    assert statuses[:3] == [101, 101, 101], statuses
    assert 429 in statuses, f"8 quick handshakes against a burst of 3 were all accepted: {statuses}"
    assert set(statuses) <= {101, 429}, statuses


def test_event_list_longer_than_api_max_events_is_refused_and_publishes_nothing(limited, seed):
    uid = seed.user()
    ws = limited.connect(uid)
    events = [{"type": "feed_update", "userId": uid, "posts": [], "n": n} for n in range(41)]
    r = limited.api("/api/events", {"events": events})
    assert r.status_code in (400, 413), (r.status_code, r.text[:300])
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    ws.barrier()
    r = limited.api("/api/events", {"events": events[:40]})
    assert r.status_code == 202, (r.status_code, r.text[:300])
    for event in events[:40]:
        ws.expect_event(event)


def test_metrics_public_serves_metrics_and_stats_without_the_key(limited):
    assert limited.get("/metrics").status_code == 200
    assert limited.get("/stats").status_code == 200
