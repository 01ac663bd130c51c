"""live_marks.py against the machine's Redis (own key prefix): what a worker writes while
its legacy connections live, and what the master makes of it when the worker is gone.
The end to end case (a SIGKILLed worker under publishing) is tests/test_legacy_worker_kill.py."""
from __future__ import annotations

import secrets

import pytest

from fonana_realtime.live_marks import LiveMarks, live_key, release
from fonana_realtime.resume_marks import RedisMarks
from support.redis_server import shared_redis


class Conn:
    """What LiveMarks reads of a Connection."""

    def __init__(self, user_id, conn_id, channels=()):
        self.user_id, self.id, self.started_at = user_id, conn_id, 1000.5
        self.user_stream = f"user_{user_id}"
        self.channels = set(channels)


@pytest.fixture
def redis_and_prefix():
    client = shared_redis()
    prefix = f"test-live-{secrets.token_hex(4)}:"
    yield client, prefix
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def flush(live):
    moves, live._moves = live._moves, {}
    live.write(moves)


def test_a_dead_workers_connections_depart_with_their_last_marks(redis_and_prefix):
    client, prefix = redis_and_prefix
    key = live_key(prefix, 4242, "host")
    live = LiveMarks(client, key, 120)
    a, b = Conn("ua", 1, ["post_p"]), Conn("ub", 2, ["post_p"])
    live.moved(a, (("user_ua", ("e1", 3)), ("post_p", ("e2", 7))))
    live.moved(b, (("post_p", ("e2", 7)),))
    flush(live)
    live.moved(a, (("post_p", ("e2", 9)), ("post_other", ("e3", 1))))    # not a stream it holds
    flush(live)
    marks = RedisMarks(client, prefix, 120, clock=lambda: 2000.0)
    assert release(client, marks, key) == 2
    assert not client.exists(key)
    assert {s: m[:2] for s, m in marks.recall("ua").items()} == {"user_ua": ("e1", 3), "post_p": ("e2", 9)}
    assert {s: m[:2] for s, m in marks.recall("ub").items()} == {"post_p": ("e2", 7)}


def test_a_departed_or_unsubscribed_stream_leaves_nothing_to_release(redis_and_prefix):
    client, prefix = redis_and_prefix
    key = live_key(prefix, 4243, "host")
    live = LiveMarks(client, key, 120)
    a, b = Conn("ua", 1, ["post_p", "post_q"]), Conn("ub", 2)
    live.moved(a, (("post_p", ("e", 1)), ("post_q", ("e", 2))))
    live.moved(b, (("user_ub", ("e", 5)),))
    flush(live)
    live.left(a, ["post_q"])                          # unsubscribed
    live.left(b, ["user_ub"], departed=True)          # departed (its own marks are Resume's)
    flush(live)
    assert b not in live._prefixes                    # nothing kept of a departed connection
    marks = RedisMarks(client, prefix, 120, clock=lambda: 2000.0)
    assert release(client, marks, key) == 1
    assert {s: m[:2] for s, m in marks.recall("ua").items()} == {"post_p": ("e", 1)}
    assert marks.recall("ub") == {} or dict(marks.recall("ub")) == {}


def test_a_user_id_that_cannot_be_a_field_is_left_out(redis_and_prefix):
    client, prefix = redis_and_prefix
    key = live_key(prefix, 4244, "host")
    live = LiveMarks(client, key, 120)
    live.moved(Conn("a|b", 1), (("user_a|b", ("e", 1)),))
    live.moved(Conn("ok", 2), (("user_ok", ("e", 1)),))
    flush(live)
    assert [f.decode() for f in client.hkeys(key)] == ["ok|2|1000.5|user_ok"]
    assert 0 < client.pttl(key) <= 120_000
