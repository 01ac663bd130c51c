"""Client frames: ping/pong, malformed frames, unknown types, `auth` refresh, close codes.

PROTOCOL.md 2.2 and 2.5. After every refusal the connection stays open, which each test
proves with a JSON ping/pong afterwards.
"""
import base64
import datetime as dt
import json
import os

import jwt
import pytest

from support.rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWebSocket

pytestmark = pytest.mark.postgres

INVALID = "Invalid message format"


@pytest.fixture(scope="module")
def user(seed):
    return seed.user()


def test_ping_gets_pong(server, user):
    ws = server.connect(user)
    ws.send_json({"type": "ping"})
    assert ws.recv_json() == {"type": "pong"}


def test_ping_works_repeatedly_and_in_order(server, user):
    ws = server.connect(user)
    for _ in range(5):
        ws.send_json({"type": "ping"})
    for _ in range(5):
        ws.expect_type("pong")
    ws.barrier()


MALFORMED_TEXT = {
    "not_json": "this is not json",
    "truncated_json": '{"type": "ping"',
    "empty_text": "",
    "json_array": '[{"type": "ping"}]',
    "json_string": '"ping"',
    "json_number": "42",
    "json_null": "null",
    "json_true": "true",
    "empty_object": "{}",
    "missing_type": '{"channel": {"type": "creator", "id": "abc"}}',
    "type_null": '{"type": null}',
}


@pytest.mark.parametrize("kind", sorted(MALFORMED_TEXT))
def test_malformed_text_frame_is_invalid_message_and_connection_lives(server, user, kind):
    ws = server.connect(user)
    ws.send_text(MALFORMED_TEXT[kind])
    ws.expect_error("invalid_message", INVALID)
    ws.barrier()


@pytest.mark.parametrize("payload", [b'{"type": "ping"}', b"\x00\x01\x02\xff"], ids=["json_bytes", "junk_bytes"])
def test_binary_frame_is_invalid_message_and_connection_lives(server, user, payload):
    ws = server.connect(user)
    ws.send_bytes(payload)
    ws.expect_error("invalid_message", INVALID)
    ws.barrier()


@pytest.mark.parametrize("value", [5, ["ping"], {"t": "ping"}, True], ids=["number", "list", "object", "bool"])
def test_type_that_is_not_a_string_is_refused_as_a_format_error(server, user, value):
    ws = server.connect(user)
    ws.send_json({"type": value})
    frame = ws.expect_type("error")
    assert frame["data"].get("code") in ("invalid_message", "unknown_type"), frame
    assert frame["data"].get("message") == INVALID, frame
    ws.barrier()


@pytest.mark.parametrize("type_", ["hello", "PING", "Subscribe", "subscribed", "connected", "unread_notifications"])
def test_unknown_type_is_unknown_type_and_connection_lives(server, user, type_):
    ws = server.connect(user)
    ws.send_json({"type": type_})
    ws.expect_error("unknown_type", INVALID)
    ws.barrier()


def test_several_bad_frames_in_a_row_each_get_their_own_error(server, user):
    ws = server.connect(user)
    ws.send_text("nope")
    ws.send_json({"type": "nope"})
    ws.send_json([1])
    ws.expect_error("invalid_message", INVALID)
    ws.expect_error("unknown_type", INVALID)
    ws.expect_error("invalid_message", INVALID)
    ws.barrier()


def test_ping_with_extra_fields_is_still_a_ping(server, user):
    ws = server.connect(user)
    ws.send_json({"type": "ping", "timestamp": 12345, "id": "abc"})
    ws.expect_type("pong")


# -- auth refresh (2.2) ------------------------------------------------------------------------

def _parse_iso(value: str) -> dt.datetime:
    assert isinstance(value, str), value
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, f"expiresAt without a time zone: {value!r}"
    return parsed


def test_auth_refresh_with_a_fresh_token_of_the_same_user(server, user):
    ws = server.connect(user, token=server.token(user, exp_in=600))
    fresh = server.token(user, exp_in=7200)
    exp = jwt.decode(fresh, options={"verify_signature": False})["exp"]
    ws.send_json({"type": "auth", "token": fresh})
    frame = ws.expect_type("authenticated")
    expires_at = _parse_iso(frame["data"]["expiresAt"])
    assert abs(expires_at.timestamp() - exp) < 1.0, (frame, exp)
    ws.barrier()


@pytest.mark.parametrize("kind", ["garbage", "wrong_secret", "alg_none"])
def test_auth_refresh_with_an_invalid_token_is_an_error_and_connection_lives(server, user, kind):
    from support.tokens import forged_token, make_token, valid_payload
    ws = server.connect(user)
    frame = {"type": "auth"}
    if kind == "garbage":
        frame["token"] = "not-a-jwt"
    elif kind == "wrong_secret":
        frame["token"] = make_token("wrong-secret-" + "k" * 20, user)
    elif kind == "alg_none":
        frame["token"] = forged_token({"alg": "none"}, valid_payload(user))
    ws.send_json(frame)
    err = ws.expect_error("invalid_token")
    assert isinstance(err["data"].get("message"), str) and err["data"]["message"], err
    ws.barrier()


def test_auth_refresh_with_an_expired_token_is_an_error_and_connection_lives(server, user):
    ws = server.connect(user)
    ws.send_json({"type": "auth", "token": server.token(user, exp_in=-86400)})
    err = ws.expect_type("error")
    assert err["data"].get("code") in ("invalid_token", "token_expired"), err
    ws.barrier()


def test_auth_refresh_with_another_users_token_closes_4001(server, seed, user):
    other = seed.user()
    ws = server.connect(user)
    ws.send_json({"type": "auth", "token": server.token(other)})
    assert ws.expect_closed() == 4001


# -- close codes (2.5) -------------------------------------------------------------------------

def test_message_over_64_kib_closes_1009(server, user):
    ws = server.connect(user, max_size=None)
    padding = base64.b64encode(os.urandom(100_000)).decode()  # incompressible, > 64 KiB either way
    ws.send_json({"type": "ping", "padding": padding})
    assert ws.expect_closed() == 1009


def test_message_just_under_the_limit_is_accepted(server, user):
    ws = server.connect(user)
    frame = json.dumps({"type": "ping", "padding": ""})
    frame = json.dumps({"type": "ping", "padding": "a" * (60_000 - len(frame))})
    ws.send_text(frame)
    ws.expect_type("pong")


def _ping_of_size(size: int) -> str:
    frame = json.dumps({"type": "ping", "padding": ""})
    return json.dumps({"type": "ping", "padding": "a" * (size - len(frame))})


def test_message_of_exactly_64_kib_is_accepted(server, user):
    ws = server.connect(user)
    frame = _ping_of_size(65536)
    assert len(frame.encode()) == 65536
    ws.send_text(frame)
    ws.expect_type("pong")


def test_message_one_byte_over_64_kib_closes_1009(server, user):
    ws = server.connect(user)
    frame = _ping_of_size(65537)
    assert len(frame.encode()) == 65537
    ws.send_text(frame)
    assert ws.expect_closed() == 1009


def _raw(server, user):
    raw = RawWebSocket(server.host, server.port, f"/ws?token={server.token(user)}")
    op, payload = raw.recv_frame()
    assert op == OP_TEXT and json.loads(payload)["type"] == "connected", (op, payload)
    return raw


def test_text_frame_that_is_not_utf8_closes_1007(server, user):
    with _raw(server, user) as raw:
        raw.send_frame(OP_TEXT, b'{"type": "ping", "x": "\xff\xfe"}')
        assert raw.close_code() == 1007


def test_raw_client_without_extensions_gets_plain_frames(server, user):
    with _raw(server, user) as raw:
        raw.send_frame(OP_TEXT, b'{"type": "ping"}')
        op, payload = raw.recv_frame()
        assert op == OP_TEXT and json.loads(payload) == {"type": "pong"}
        raw.send_frame(OP_PING, b"hello")
        op, payload = raw.recv_frame()
        assert (op, payload) == (OP_PONG, b"hello")


def test_client_close_frame_is_answered_with_a_close(server, user):
    with _raw(server, user) as raw:
        raw.send_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"bye")
        assert raw.close_code() == 1000


def test_deflate_offer_is_declined_and_the_client_still_works(server, user):
    """A browser offers permessage-deflate; the server answers without the extension (no
    per-connection inflate context to keep), and the offering client works as usual."""
    client = server.connect(user)           # websockets offers permessage-deflate by default
    offered = client.conn.request.headers.get("Sec-WebSocket-Extensions", "")
    assert "permessage-deflate" in offered
    assert client.conn.response.headers.get("Sec-WebSocket-Extensions") is None
    client.send_json({"type": "ping", "padding": "x" * 5000})   # would be compressed if negotiated
    client.expect_type("pong")
