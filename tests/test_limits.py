"""Limits a production server enforces (PROTOCOL.md 1, 2.1, 2.5, 4), each against a real
gunicorn started with small values so the limit is reached quickly:

- inbound frame size (close 1009), binary frames, invalid UTF-8 (close 1007);
- the per-connection command rate (error `rate_limited`, sustained flood → close 4008);
- subscriptions per connection, connections per user (429 before the upgrade);
- handshakes per client IP, with and without TRUSTED_PROXIES (X-Forwarded-For);
- the HTTP API's body size (413) and list length (400).

The one home of these limits (tests/test_ws_limits.py repeated five of them and is gone);
the slow reader (close 4009) is tests/test_slow_client.py, METRICS_PUBLIC is
tests/test_metrics.py, the API's validation matrix in-process tests/test_api_inprocess.py.
"""
from __future__ import annotations

import json
import time

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus

from support.hardening import running_server
from support.flood import Flood
from support.rawws import OP_BINARY, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWebSocket, masked_frame
from support.waiting import wait_until
from support.ws import open_ws, refused_handshake

pytestmark = pytest.mark.postgres

MAX_MESSAGE = 4096
MAX_SUBSCRIPTIONS = 3
MAX_CONNECTIONS_PER_USER = 2
API_MAX_BODY = 2048
API_MAX_EVENTS = 5

RATE_PER_SEC = 5
RATE_BURST = 10

HS_BURST = 3


@pytest.fixture(scope="module")
def limits_server(tmp_path_factory, pg_url):
    with running_server(tmp_path_factory, "limits", database_url=pg_url, env={
        "WS_MAX_MESSAGE_BYTES": MAX_MESSAGE,
        "WS_MAX_SUBSCRIPTIONS": MAX_SUBSCRIPTIONS,
        "WS_MAX_CONNECTIONS_PER_USER": MAX_CONNECTIONS_PER_USER,
        "API_MAX_BODY_BYTES": API_MAX_BODY,
        "API_MAX_EVENTS": API_MAX_EVENTS,
    }) as srv:
        yield srv


@pytest.fixture(scope="module")
def rate_server(tmp_path_factory, pg_url):
    with running_server(tmp_path_factory, "rate", database_url=pg_url, env={
        "WS_RATE_PER_SEC": RATE_PER_SEC,
        "WS_RATE_BURST": RATE_BURST,
        "WS_RATE_ABUSE_SECONDS": 1,
    }) as srv:
        yield srv


def _hs_env(extra=None):
    # one handshake token per 100 s: nothing refills while the module runs
    env = {"WS_HANDSHAKES_PER_IP_PER_SEC": "0.01", "WS_HANDSHAKES_PER_IP_BURST": HS_BURST}
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def proxied_server(tmp_path_factory, pg_url):
    with running_server(tmp_path_factory, "hs-proxied", database_url=pg_url,
                        env=_hs_env({"TRUSTED_PROXIES": "127.0.0.1"})) as srv:
        yield srv


@pytest.fixture(scope="module")
def direct_server(tmp_path_factory, pg_url):
    with running_server(tmp_path_factory, "hs-direct", database_url=pg_url, env=_hs_env()) as srv:
        yield srv


@pytest.fixture
def user(seed):
    return seed.user()


def ping_frame_of_size(n: int) -> str:
    """A JSON ping of exactly n UTF-8 bytes."""
    base = json.dumps({"type": "ping", "pad": ""})
    frame = json.dumps({"type": "ping", "pad": "a" * (n - len(base))})
    assert len(frame.encode()) == n
    return frame


# -- 1. frame size, binary, UTF-8 ------------------------------------------------------------

def test_frame_at_the_limit_is_served_and_one_byte_more_closes_1009(limits_server, user):
    ws = limits_server.connect(user)
    ws.send_text(ping_frame_of_size(MAX_MESSAGE))
    ws.expect_type("pong")
    ws.send_text(ping_frame_of_size(MAX_MESSAGE + 1))
    assert ws.expect_closed() == 1009


def test_limit_counts_utf8_bytes_not_characters(limits_server, user):
    ws = limits_server.connect(user)
    # fewer characters than the limit, more bytes than it (é is two bytes in UTF-8)
    pad = "é" * (MAX_MESSAGE // 2 + 10)
    frame = json.dumps({"type": "ping", "pad": pad}, ensure_ascii=False)
    assert len(frame) < MAX_MESSAGE < len(frame.encode())
    ws.send_text(frame)
    assert ws.expect_closed() == 1009


def test_fragmented_message_is_measured_whole(limits_server, user):
    ws = limits_server.connect(user)
    small = ping_frame_of_size(MAX_MESSAGE)
    ws.conn.send([small[:1000], small[1000:3000], small[3000:]])   # three fragments, one message
    ws.expect_type("pong")
    big = ping_frame_of_size(MAX_MESSAGE + 600)
    ws.conn.send([big[i:i + 1000] for i in range(0, len(big), 1000)])  # each fragment under the limit
    assert ws.expect_closed() == 1009


MAX_FRAGMENTS = 128        # connection.MAX_FRAGMENTS (PROTOCOL.md 2.5)


def _fragments(text: bytes, count: int) -> bytes:
    """`text` as one message in `count` fragments: all of it in the first, then empty ones."""
    frames = [masked_frame(OP_TEXT, text, fin=count == 1)]
    frames += [masked_frame(OP_CONT, b"", fin=i == count - 1) for i in range(1, count)]
    return b"".join(frames)


def test_message_in_too_many_fragments_closes_1009(limits_server, user):
    """Issue 18.2: empty continuation frames carry no payload bytes, so the size limit
    never saw them (3M of them: +21.8 MB RSS, 25 s of CPU, never closed)."""
    with RawWebSocket(limits_server.host, limits_server.port, f"/ws?token={limits_server.token(user)}") as raw:
        raw.recv_json_until("connected")
        raw.sock.sendall(_fragments(b'{"type":"ping"}', MAX_FRAGMENTS))       # at the limit: served
        raw.recv_json_until("pong")
        raw.sock.sendall(_fragments(b'{"type":"ping"}', MAX_FRAGMENTS + 2)[:-6])    # 129, unfinished
        assert raw.close_code() == 1009


def test_frame_over_the_default_64_kib_closes_1009(server, user):
    ws = server.connect(user, max_size=None)
    ws.send_text(ping_frame_of_size(65536))
    ws.expect_type("pong")
    ws.send_text(ping_frame_of_size(65537))
    assert ws.expect_closed() == 1009


@pytest.mark.parametrize("payload", [b'{"type":"ping"}', b"\x00\xff" * 10, b""], ids=["json", "junk", "empty"])
def test_binary_frame_is_invalid_message_and_connection_lives(limits_server, user, payload):
    ws = limits_server.connect(user)
    ws.send_bytes(payload)
    ws.expect_error("invalid_message", "Invalid message format")
    ws.ping()


def test_text_frame_that_is_not_utf8_closes_1007(limits_server, user):
    with RawWebSocket(limits_server.host, limits_server.port, f"/ws?token={limits_server.token(user)}") as raw:
        op, payload = raw.recv_frame()
        assert op == OP_TEXT and json.loads(payload)["type"] == "connected", payload
        raw.send_frame(OP_TEXT, b'{"type":"ping"}')
        op, payload = raw.recv_frame()
        assert json.loads(payload) == {"type": "pong"}
        raw.send_frame(OP_TEXT, b"\xff\xfe")
        assert raw.close_code() == 1007


# -- 2. command rate -------------------------------------------------------------------------

def _replies(ws, n):
    """The next n frames, decoded."""
    return [ws.recv_json() for _ in range(n)]


def _ping_when_allowed(ws, timeout=5.0):
    """A JSON ping answered with pong, once the bucket has refilled (polled: the server
    announces no refill)."""
    def attempt():
        ws.send_json({"type": "ping"})
        frame = ws.recv_json()
        if frame.get("type") == "pong":
            return True
        if not (frame.get("type") == "error" and frame["data"]["code"] == "rate_limited"):
            pytest.fail(f"unexpected answer to a ping: {frame!r}")
        return False
    wait_until(attempt, timeout, "a ping answered with pong after the rate limit", interval=0.1)


def test_burst_over_the_bucket_is_rate_limited_and_connection_lives(rate_server, user):
    ws = rate_server.connect(user)
    n = RATE_BURST + 10
    for _ in range(n):
        ws.send_json({"type": "ping"})
    replies = _replies(ws, n)
    pongs = [r for r in replies if r == {"type": "pong"}]
    limited = [r for r in replies if r.get("type") == "error"]
    assert len(pongs) + len(limited) == n, replies
    assert len(pongs) >= RATE_BURST, replies
    assert limited, f"{n} pings at once against a burst of {RATE_BURST}: none was rate limited"
    for r in limited:
        assert r["data"]["code"] == "rate_limited", r
        assert isinstance(r["data"]["message"], str) and r["data"]["message"], r
    # the first RATE_BURST commands were all within the bucket
    assert all(r == {"type": "pong"} for r in replies[:RATE_BURST]), replies
    _ping_when_allowed(ws)
    assert ws.is_open


def test_rate_limit_is_per_connection(rate_server, user):
    a = rate_server.connect(user)
    b = rate_server.connect(user)
    for _ in range(RATE_BURST + 5):
        a.send_json({"type": "ping"})
    assert any(r.get("type") == "error" for r in _replies(a, RATE_BURST + 5))
    for _ in range(RATE_BURST):          # b has its own full bucket
        b.send_json({"type": "ping"})
    assert _replies(b, RATE_BURST) == [{"type": "pong"}] * RATE_BURST


def test_sustained_flood_closes_4008(rate_server, user):
    ws = rate_server.connect(user)
    batch, max_batches = 20, 2000          # bounded: at most 40 000 frames, at most 15 s
    deadline = time.monotonic() + 15
    batches = limited = 0
    code = None
    try:
        while batches < max_batches and time.monotonic() < deadline:
            batches += 1
            for _ in range(batch):
                ws.send_json({"type": "ping"})
            for frame in _replies(ws, batch):     # paced by the server's answers
                if frame.get("type") == "error":
                    assert frame["data"]["code"] == "rate_limited", frame
                    limited += 1
                else:
                    assert frame == {"type": "pong"}, frame
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
    if code is None:
        code = ws.expect_closed()
    assert code == 4008, f"flood of {batches} batches ended with close {code}"
    assert limited > 0
    # not a ban: the same user connects again at once
    fresh = rate_server.connect(user)
    fresh.ping()


FLOOD_SECONDS = 12       # bound of each flood; the server should close it long before


@pytest.mark.parametrize("opcode, payload", [(OP_TEXT, b'{"type":"ping"}'), (OP_PING, b""), (OP_PONG, b""),
                                             (OP_BINARY, b"x")],
                         ids=["json-ping", "ping-frame", "pong-frame", "binary"])
def test_a_flood_is_closed_4008_and_does_not_freeze_the_worker(rate_server, seed, opcode, payload):
    """Issue 18.1: a client writing frames as fast as it can (JSON pings; WebSocket ping or
    pong frames and binary messages count against the same bucket) is closed 4008, and another connection
    of the same one-worker server is answered while the flood still runs (the read loop
    yields between reads). Ordering only: the bystander's pong must come while the
    flooder is still writing."""
    bystander = rate_server.connect(seed.user())
    flood = Flood.of(rate_server, rate_server.token(seed.user()), opcode, payload, seconds=FLOOD_SECONDS)
    try:
        flood.start()
        assert flood.underway.wait(10), "the server took nothing of the flood"
        bystander.ping(timeout=FLOOD_SECONDS + 10)
        served_during_flood = flood.flooding
        assert flood.wait(FLOOD_SECONDS + 15), "the flooder's connection did not end"
    finally:
        flood.close()
    assert served_during_flood, \
        f"the bystander's ping was answered only after the flood stopped ({flood.sent} bytes sent)"
    assert flood.close_code == 4008, f"flooder closed with {flood.close_code} after {flood.sent} bytes"
    bystander.ping()


# -- 3. subscriptions per connection, connections per user --------------------------------------

def test_subscriptions_per_connection_are_capped(limits_server, user):
    ws = limits_server.connect(user)
    channels = [{"type": "creator", "id": f"cap-{i}"} for i in range(MAX_SUBSCRIPTIONS + 1)]
    for ch in channels[:MAX_SUBSCRIPTIONS]:
        ws.subscribe(ch)
    ws.send_json({"type": "subscribe", "channel": channels[-1]})
    err = ws.expect_error("too_many_subscriptions", "Failed to subscribe")
    assert err["data"].get("channel") == channels[-1], err
    # a channel already held is not a new one: still allowed at the cap
    ws.subscribe(channels[0], key="creator_cap-0")
    # freeing a slot makes room again
    ws.unsubscribe(channels[1])
    ws.subscribe(channels[-1], key=f"creator_cap-{MAX_SUBSCRIPTIONS}")
    ws.send_json({"type": "subscribe", "channel": {"type": "creator", "id": "one-too-many"}})
    ws.expect_error("too_many_subscriptions")
    # the cap is per connection: another connection of the same user has its own
    other = limits_server.connect(user)
    for ch in channels[:MAX_SUBSCRIPTIONS]:
        other.subscribe(ch)


def test_connections_per_user_are_capped_before_the_upgrade(limits_server, seed, user):
    held = [limits_server.connect(user) for _ in range(MAX_CONNECTIONS_PER_USER)]
    refusal = refused_handshake(limits_server.url(limits_server.token(user)))
    assert refusal.status == 429, (refusal.status, refusal.body)
    assert "application/json" in refusal.headers.get("content-type", ""), refusal.headers
    body = refusal.json()
    assert body.get("reason") == "too_many_connections", body
    # another user is not affected
    limits_server.connect(seed.user()).ping()
    # the held connections are unharmed
    for ws in held:
        ws.ping()
    # once one closes, a new handshake is accepted (the slot is freed asynchronously)
    held[0].close()

    def reconnect():
        try:
            ws = open_ws(limits_server.url(limits_server.token(user)))
        except InvalidStatus as exc:
            if exc.response.status_code != 429:
                pytest.fail(f"handshake answered {exc.response.status_code}, not 429 or 101")
            return None
        limits_server.clients.append(ws)
        return ws
    ws = wait_until(reconnect, 10, "a handshake accepted after a connection of the user closed")
    ws.ping()
    assert refused_handshake(limits_server.url(limits_server.token(user))).status == 429


# -- 4. handshakes per client IP -------------------------------------------------------------------

def _accepted(srv, user, headers=None):
    with open_ws(srv.url(srv.token(user)), headers=headers) as ws:
        assert ws.welcome["data"]["userId"] == user


def _assert_rate_refused(srv, user, headers=None):
    refusal = refused_handshake(srv.url(srv.token(user)), headers=headers)
    assert refusal.status == 429, (refusal.status, refusal.body)
    assert "application/json" in refusal.headers.get("content-type", ""), refusal.headers
    assert refusal.json().get("reason") == "handshake_rate", refusal.body


def test_trusted_proxy_each_forwarded_ip_has_its_own_bucket(proxied_server, user):
    a = {"X-Forwarded-For": "203.0.113.10"}
    b = {"X-Forwarded-For": "203.0.113.20"}
    for _ in range(HS_BURST):
        _accepted(proxied_server, user, a)
    _assert_rate_refused(proxied_server, user, a)
    _assert_rate_refused(proxied_server, user, a)
    # another client behind the same proxy is not affected
    for _ in range(HS_BURST):
        _accepted(proxied_server, user, b)
    _assert_rate_refused(proxied_server, user, b)
    # the proxy's own address (no X-Forwarded-For) is a third bucket
    _accepted(proxied_server, user)


def test_trusted_proxy_uses_the_last_untrusted_hop(proxied_server, user):
    # the client controls the left part of X-Forwarded-For; the proxy appends what it saw
    for spoof in ("1.1.1.1", "2.2.2.2", "3.3.3.3"):
        _accepted(proxied_server, user, {"X-Forwarded-For": f"{spoof}, 198.51.100.7"})
    _assert_rate_refused(proxied_server, user, {"X-Forwarded-For": "4.4.4.4, 198.51.100.7"})
    _assert_rate_refused(proxied_server, user, {"X-Forwarded-For": "198.51.100.7"})


def test_refused_handshakes_count_too(proxied_server, user):
    ip = {"X-Forwarded-For": "203.0.113.30"}
    for _ in range(HS_BURST):
        refusal = refused_handshake(proxied_server.url("not-a-token"), headers=ip)
        assert refusal.status == 401, refusal
    _assert_rate_refused(proxied_server, user, ip)


def test_untrusted_peer_forwarded_for_is_ignored(direct_server, user):
    for i in range(HS_BURST):
        _accepted(direct_server, user, {"X-Forwarded-For": f"192.0.2.{i + 1}"})
    # a fresh spoofed address does not buy a fresh bucket: the socket peer's is empty
    _assert_rate_refused(direct_server, user, {"X-Forwarded-For": "192.0.2.200"})
    _assert_rate_refused(direct_server, user)
    # /health is not a handshake and is not limited
    assert direct_server.get("/health").status_code == 200


# -- 5. HTTP API body size and list length ----------------------------------------------------------

def _event(post_id="p-limits", pad=0):
    return {"type": "post_liked", "postId": post_id, "userId": "u1", "likesCount": 1, "pad": "x" * pad}


def _assert_json_error(r, status):
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and body.get("error"), body
    return body


def test_api_body_at_the_limit_is_accepted(limits_server):
    raw = json.dumps({"event": _event()})
    raw = json.dumps({"event": _event(pad=API_MAX_BODY - len(raw))})
    assert len(raw.encode()) == API_MAX_BODY
    r = limits_server.api("/api/events", raw=raw)
    assert r.status_code == 202, (r.status_code, r.text)


@pytest.mark.parametrize("path", ["/api/events", "/api/notifications"])
def test_api_body_over_the_limit_is_413_json(limits_server, path):
    raw = json.dumps({"event": _event(pad=API_MAX_BODY)})
    body = _assert_json_error(limits_server.api(path, raw=raw), 413)
    assert body.get("error") == "payload_too_large", body
    assert limits_server.get("/health").status_code == 200


def test_api_chunked_body_over_the_limit_is_413_json(limits_server):
    raw = json.dumps({"event": _event(pad=API_MAX_BODY * 4)}).encode()

    def chunks():                     # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(raw), 1000):
            yield raw[i:i + 1000]
    try:
        r = limits_server.http.post(limits_server.base_url + "/api/events", data=chunks(), timeout=15, headers={
            "Authorization": f"Bearer {limits_server.api_key}", "Content-Type": "application/json"})
    except requests.ConnectionError as exc:
        raise AssertionError(f"the server dropped the connection instead of answering 413: {exc}") from exc
    _assert_json_error(r, 413)


def test_api_list_over_max_events_is_400_json(limits_server):
    r = limits_server.api("/api/events", {"events": [_event() for _ in range(API_MAX_EVENTS + 1)]})
    body = _assert_json_error(r, 400)
    assert body.get("error") == "bad_request", body
    assert str(API_MAX_EVENTS) in json.dumps(body), body


def test_api_list_at_max_events_is_published(limits_server, seed):
    author = seed.user()
    post = seed.post(author)
    ws = limits_server.connect(author)
    ws.subscribe({"type": "post", "postId": post})
    events = [dict(_event(post), likesCount=i) for i in range(API_MAX_EVENTS)]
    r = limits_server.api("/api/events", {"events": events})
    assert r.status_code == 202, (r.status_code, r.text)
    for e in events:
        ws.expect_event(e)
    # and the refused list of one more published nothing
    r = limits_server.api("/api/events", {"events": events + [_event(post)]})
    assert r.status_code == 400
    ws.barrier()
