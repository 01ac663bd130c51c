"""wire.py on its own: names, the envelope, the decoder's union rule and its 64-topic cap."""
from __future__ import annotations

import json

import pytest

from fonana_realtime import wire
from fonana_realtime.events import Route
from fonana_realtime.wsframes import dumps


def test_topics_and_streams_name_each_other():
    route = Route(channels=("post_p1",), users=("u1",))
    assert wire.route_topics(route) == ["channel:post_p1", "user:u1"]
    for topic, stream in (("channel:post_p1", "post_p1"), ("user:u1", "user_u1"),
                          ("channel:notifications_u1", "notifications_u1")):
        assert wire.topic_stream(topic) == stream and wire.stream_topic(stream) == topic


def test_a_union_is_delivered_once_to_all_listed_topics_in_the_listed_order():
    decoder = wire.Decoder()
    topics = ["channel:post_p1", "user:u1"]
    body = wire.envelope(topics, dumps({"type": "x"}))
    first = decoder.decode("user:u1", body)                  # the copy on user:u1 came first
    assert first.topics == topics and first.event == {"type": "x"}
    assert first.payload == b'{"type":"x"}'
    assert decoder.decode("channel:post_p1", body) is None   # the other copy: already delivered


def test_a_list_over_the_cap_is_not_a_union_so_no_copy_is_dropped():
    decoder = wire.Decoder()
    topics = [f"channel:post_p{n}" for n in range(wire.MAX_ENVELOPE_TOPICS + 1)]
    body = json.dumps({"event": {"type": "x"}, "id": "same-id", "topics": topics}).encode()
    got = [decoder.decode(topic, body) for topic in topics]
    assert all(m is not None for m in got)                   # every audience gets its copy
    assert [m.topics for m in got] == [[t] for t in topics]  # each to its own topic only
    # and the id was not remembered: a real union with that id afterwards is delivered
    union = json.dumps({"event": {"type": "y"}, "id": "same-id", "topics": topics[:2]}).encode()
    assert decoder.decode(topics[0], union).topics == topics[:2]


def test_at_the_cap_a_union_is_still_a_union():
    decoder = wire.Decoder()
    topics = [f"channel:post_p{n}" for n in range(wire.MAX_ENVELOPE_TOPICS)]
    body = wire.envelope(topics, dumps({"type": "x"}))
    assert decoder.decode(topics[5], body).topics == topics
    assert all(decoder.decode(t, body) is None for t in topics)


def test_the_encoder_refuses_a_union_over_the_cap():
    with pytest.raises(ValueError):
        wire.envelope([f"user:u{n}" for n in range(wire.MAX_ENVELOPE_TOPICS + 1)], b'{"type":"x"}')


@pytest.mark.parametrize("raw,reason", [
    (b"not json", "not_json"), (b"[1]", "not_an_object"), (b'{"event":{"type":""}}', "bad_event"),
    (b'{"event":{"type":"x"},"id":12}', "bad_id"),
    # issue 18.6: a raw PUBLISH of a server frame's type, which the API refuses
    (b'{"event":{"type":"connected","data":{"userId":"u1"}}}', "server_frame_type"),
    (b'{"event":{"type":"error","data":{"code":"access_revoked"}}}', "server_frame_type"),
])
def test_malformed_envelopes_are_dropped_with_a_reason(raw, reason):
    with pytest.raises(wire.Drop) as caught:
        wire.Decoder().decode("user:u1", raw)
    assert caught.value.reason == reason


def test_a_call_of_a_cross_slot_publication_goes_to_its_own_topics_after_the_earlier_calls():
    """Redis Cluster: every call's envelope lists the whole route in call order, with
    positions for its own streams only (redis_publish.lua, `^` topics)."""
    route = ["channel:post_p", "channel:post_q", "user:u"]      # post_q and u: the 2nd call
    env = {"event": {"type": "x"}, "id": "m.2", "topics": route, "ts": 1.0,
           "pos": {"post_q": ["E", 3], "user_u": ["F", 9]}}
    message = wire.Decoder().decode("user:u", json.dumps(env).encode())
    assert message.topics == ["channel:post_q", "user:u"]
    assert message.before == ("channel:post_p",)
    env = dict(env, id="m", pos={"post_p": ["E", 1]})              # the first call
    message = wire.Decoder().decode("channel:post_p", json.dumps(env).encode())
    assert message.topics == ["channel:post_p"] and message.before == ()
    env = dict(env, id="n", pos={"post_p": ["E", 1], "post_q": ["E", 2], "user_u": ["F", 1]})
    message = wire.Decoder().decode("channel:post_p", json.dumps(env).encode())
    assert message.topics == route and message.before == ()       # one call: a plain union
