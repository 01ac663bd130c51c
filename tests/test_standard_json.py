"""Standard JSON only (issue 8.3): NaN, Infinity, numbers beyond the double range and lone
surrogates are refused wherever they come in (HTTP API, WebSocket commands, Redis), and the
server never writes non-standard JSON (frames, API answers, logs).

A browser's JSON.parse rejects `NaN`/`Infinity`; a lone surrogate (`"\\ud800"`) cannot be
written as UTF-8 at all, which made a list publish fail half-way with a 500 and a command
end its connection with 1011.
"""
from __future__ import annotations

import json
import math
import secrets

import pytest

from fonana_realtime.logs import json_line
from fonana_realtime.publisher import InvalidEvent, RedisPublisher
from fonana_realtime.wsframes import dumps, loads
from support.redis_server import SHARED_URL, shared_redis
from support.server import Server

pytestmark = pytest.mark.postgres

LONE = "\\ud800"          # the six characters of the JSON escape, as a publisher sends them


@pytest.fixture
def scene(seed):
    creator = seed.user(is_creator=True)
    return {"creator": creator, "fan": seed.user(), "post": seed.post(creator)}


def _error_log(srv: Server) -> str:
    path = srv.log_dir / "ws-error.log"
    return path.read_text(errors="replace") if path.is_file() else ""


# -- the parser and the writers, in-process ------------------------------------------------------

@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a":-Infinity}', "1e400", "[-1e400]", "1" + "0" * 400 + ".5",
                                  f'["{LONE}"]', f'{{"{LONE}":1}}', '"\\udc00x"', '["ok","\\udbff"]'])
def test_loads_refuses_what_is_not_standard_json(text):
    with pytest.raises(ValueError):
        loads(text)
    with pytest.raises(ValueError):
        loads(text.encode())


def test_loads_refuses_a_surrogate_encoded_in_the_bytes():
    """json.loads decodes bytes with "surrogatepass": an encoded lone surrogate (CESU-8)
    would slip past the escape check. Bytes must be strict UTF-8."""
    with pytest.raises(ValueError):
        loads(b'["\xed\xa0\x80"]')


def test_loads_keeps_what_is_standard():
    assert loads('"\\ud83d\\ude00"') == "\U0001F600"          # a surrogate pair is one character
    assert loads('"\\\\ud800"') == "\\ud800"                   # an escaped backslash, not an escape
    assert loads("[1e308, -2.5, 12345678901234567890]") == [1e308, -2.5, 12345678901234567890]
    assert loads("1" + "0" * 400) == 10 ** 400          # an integer is written back as it came
    deep = "[" * 64 + "]" * 64
    assert loads(deep) == loads(deep.encode())
    with pytest.raises(ValueError):
        loads("[" * 65 + "]" * 65)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "\ud800", {"k": [math.nan]}])
def test_dumps_never_writes_non_standard_json(value):
    with pytest.raises(ValueError):
        dumps(value)


def test_log_lines_are_standard_json_whatever_a_field_holds():
    line = json_line({"message": "x", "count": math.nan, "reason": "\ud800", "code": math.inf})
    parsed = json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in a log line"))
    assert parsed["count"] == "nan" and parsed["code"] == "inf" and parsed["reason"] == "\ud800"
    line.encode("utf-8")


@pytest.mark.parametrize("bad", [math.nan, math.inf, "\ud800"])
def test_the_python_publisher_refuses_non_standard_events_before_sending(bad):
    """Against the machine's Redis: nothing reaches Redis at all (no history or meta key of
    the stream, no message on its topic), and a good event afterwards still goes through."""
    prefix = f"t-{secrets.token_hex(4)}:"
    client = shared_redis()
    listener = client.pubsub()
    listener.subscribe(prefix + "channel:post_p1")
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    pub = RedisPublisher(SHARED_URL, prefix=prefix)
    try:
        with pytest.raises(InvalidEvent, match="not standard JSON"):
            # in a free-form object: a likesCount of NaN is refused before, as not a count
            pub.comment_added("p1", {"id": "c1", "content": bad})
        assert client.keys(prefix + "*") == []
        pub.post_liked("p1", "u1", 5)
        message = listener.get_message(timeout=5)
        assert message is not None and message["type"] == "message"
        assert json.loads(message["data"])["event"]["likesCount"] == 5   # the first: nothing before it
    finally:
        listener.close()
        for key in client.keys(prefix + "*"):
            client.delete(key)


# -- POST /api/events ---------------------------------------------------------------------------

@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_an_event_with_a_non_standard_number_is_a_400_and_nobody_receives_it(server, scene, number):
    ws = server.connect(scene["fan"])
    ws.subscribe({"type": "post", "postId": scene["post"]})
    raw = ('{"event":{"type":"post_liked","postId":"%s","userId":"%s","likesCount":%s}}'
           % (scene["post"], scene["fan"], number))
    r = server.api("/api/events", raw=raw)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    body = r.json()
    assert body["error"] == "bad_request" and "not valid JSON" in body["reason"], body
    ws.barrier()              # nothing was delivered
    # the same event with a real number goes through
    good = {"type": "post_liked", "postId": scene["post"], "userId": scene["fan"], "likesCount": 5}
    server.publish({"event": good})
    ws.expect_event(good)


def test_a_list_whose_third_event_holds_a_lone_surrogate_publishes_nothing(server, scene):
    ws = server.connect(scene["fan"])
    ws.subscribe({"type": "post", "postId": scene["post"]})
    before = _error_log(server)
    events = [json.dumps({"type": "post_liked", "postId": scene["post"], "userId": scene["fan"], "likesCount": n})
              for n in (1, 2)]
    events.append('{"type":"comment_added","postId":"%s","comment":{"content":"%s"}}' % (scene["post"], LONE))
    r = server.api("/api/events", raw='{"events":[%s]}' % ",".join(events))
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert "lone surrogate" in r.json()["reason"], r.json()
    ws.barrier()              # not even the first two
    after = _error_log(server)[len(before):]
    assert "Traceback" not in after and "internal_error" not in after, after[-2000:]


def test_a_lone_surrogate_in_a_notification_is_a_400(server, scene):
    raw = '{"userId":"%s","type":"SYSTEM_ANNOUNCEMENT","title":"t","message":"%s"}' % (scene["fan"], LONE)
    r = server.api("/api/notifications", raw=raw)
    assert r.status_code == 400 and r.json()["error"] == "bad_request", (r.status_code, r.text[:300])


# -- WebSocket commands -------------------------------------------------------------------------

@pytest.mark.parametrize("frame", [
    '{"type":"subscribe","channel":{"type":"post","postId":"%s"}}' % LONE,
    # an extra field of a channel object is echoed back in `subscribed`: it must never get there
    '{"type":"subscribe","channel":{"type":"post","postId":"POST","note":"%s"}}' % LONE,
    '{"type":"subscribe","channel":{"type":"post","postId":"POST"},"n":NaN}',
    '{"type":"auth","token":"%s"}' % LONE,
    '{"type":"ping","x":1e400}',
])
def test_a_command_with_non_standard_json_gets_an_error_frame_and_the_connection_lives(server, scene, frame):
    ws = server.connect(scene["fan"])
    before = _error_log(server)
    ws.send_text(frame.replace("POST", scene["post"]))
    ws.expect_error("invalid_message", "Invalid message format")
    ws.ping()
    ws.subscribe({"type": "post", "postId": scene["post"]})
    assert ws.is_open
    after = _error_log(server)[len(before):]
    assert "Traceback" not in after, after[-2000:]


# -- Redis: what another process publishes -----------------------------------------------------

def test_a_redis_message_with_nan_or_a_lone_surrogate_is_dropped_and_the_next_one_delivered(
        tmp_path_factory, pg_url, scene):
    prefix = f"fonana:rt:json-{secrets.token_hex(4)}:"
    srv = Server(tmp_path_factory.mktemp("json-redis"), name="json-redis", database_url=pg_url,
                 env={"REDIS_URL": SHARED_URL, "REDIS_PREFIX": prefix})
    srv.start()
    rds = shared_redis()
    try:
        ws = srv.connect(scene["fan"])
        ws.subscribe({"type": "post", "postId": scene["post"]})
        topic = f"{prefix}channel:post_{scene['post']}"
        for bad in ('{"event":{"type":"post_liked","postId":"%s","likesCount":NaN}}' % scene["post"],
                    '{"event":{"type":"comment_added","postId":"%s","comment":"%s"}}' % (scene["post"], LONE)):
            assert rds.publish(topic, bad) == 1
        good = {"type": "post_liked", "postId": scene["post"], "userId": scene["fan"], "likesCount": 3}
        assert rds.publish(topic, json.dumps({"event": good})) == 1
        ws.expect_event(good)          # the bad ones never arrived, and the listener lives
        ws.barrier()
        assert "Traceback" not in _error_log(srv)
    finally:
        rds.close()
        srv.stop(timeout=10)
