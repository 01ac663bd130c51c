"""Pure logic of the Redis broker: the envelope bytes, the back-off, the redacted URL."""
from __future__ import annotations

import json

from fonana_realtime.wire import envelope
from fonana_realtime.wsframes import dumps


def test_single_topic_envelope_is_the_event_and_a_timestamp():
    event = {"type": "post_liked", "postId": "p1", "userId": "u1", "likesCount": 5, "text": "é \"q\""}
    body = envelope(["channel:post_p1"], dumps(event), now=1751371200.5)
    assert json.loads(body) == {"event": event, "ts": 1751371200.5}


def test_union_envelope_names_every_topic_and_has_an_id():
    event = {"type": "custom"}
    topics = ["channel:post_p1", "user:u1"]
    a, b = json.loads(envelope(topics, dumps(event))), json.loads(envelope(topics, dumps(event)))
    assert a["event"] == event and a["topics"] == topics and isinstance(a["ts"], float)
    assert isinstance(a["id"], str) and 0 < len(a["id"]) <= 64 and a["id"] != b["id"]


def test_backoff_is_capped_and_jittered():
    from fonana_realtime.broker.backoff import BACKOFF_CAP, backoff_delay
    first = [backoff_delay(0) for _ in range(200)]
    late = [backoff_delay(n) for n in range(5, 60) for _ in range(20)]
    assert max(first) <= 0.1 and min(first) >= 0.05
    assert max(late) <= BACKOFF_CAP and min(late) >= BACKOFF_CAP / 2
    assert len(set(late)) > 100                                   # jittered, not synchronised


def test_redis_url_is_logged_without_its_password():
    from fonana_realtime.broker.link import redacted
    assert redacted("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redacted("rediss://user:s3cret@h/1") == "rediss://user:***@h/1"
    assert redacted("redis://h:6379/0") == "redis://h:6379/0"
    assert redacted("redis://u:s3cret@[::1]:6379") == "redis://u:***@[::1]:6379"
