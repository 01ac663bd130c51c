"""Positions and history in Redis (PROTOCOL.md 7), against real Redis: the machine's
(random prefix) and, for losing its data, a private redis-server started without
persistence.

The publish script assigns consecutive offsets atomically with the PUBLISH (two
processes publishing to one stream at once: one order, no duplicate, no gap), keeps the
history bounded and timed, and a stream whose data was lost gets a new epoch, so an old
offset is never matched with new events.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import redis

from fonana_realtime.redis_history import (AHEAD, EPOCH, EXPIRED, PUBLISH_SCRIPT_PATH, TOO_MANY,
                                           TRIMMED, RedisHistory, history_key, meta_key)
from support.waiting import wait_until
from support.redis_server import SHARED_URL, RedisServer, shared_redis

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def rds():
    r = shared_redis()
    prefix = f"test:{uuid.uuid4().hex[:10]}:"
    r.test_prefix = prefix
    yield r
    for key in r.scan_iter(prefix + "*", count=1000):
        r.delete(key)
    r.close()


def event(n: int, **extra) -> bytes:
    return json.dumps({"type": "custom", "n": n, **extra}, separators=(",", ":")).encode()


def redis_time(r) -> float:
    seconds, micros = r.time()
    return seconds + micros / 1e6


def subscriber(r, *channels):
    ps = r.pubsub()
    ps.subscribe(*channels)
    for _ in channels:                          # the subscribe confirmations
        assert ps.get_message(timeout=5)["type"] == "subscribe"
    return ps


def received(ps, count: int) -> list[dict]:
    out = []
    while len(out) < count:
        msg = ps.get_message(ignore_subscribe_messages=True, timeout=5)
        assert msg is not None, f"got {len(out)} of {count} messages"
        out.append(json.loads(msg["data"]))
    return out


def test_consecutive_offsets_and_the_positioned_envelope(rds):
    h = RedisHistory(rds, rds.test_prefix)
    p = rds.test_prefix
    ps = subscriber(rds, p + "channel:post_p1", p + "user:u2")
    epoch, top = h.position("post_p1")
    assert top == 0 and epoch
    assert h.position("post_p1") == (epoch, 0)          # created once, then kept

    # The event's bytes travel as given: a number cjson would round stays exact.
    big = b'{"type":"custom","n":1,"big":12345678901234567890,"f":0.1000000000000000055511}'
    first = h.publish(["channel:post_p1"], big, message_id="m-1")
    assert first == 1 and first.id == "m-1"             # one subscriber received it
    assert first.positions == {"post_p1": (epoch, 1)} and first.offsets == {"post_p1": 1}
    raw = ps.get_message(ignore_subscribe_messages=True, timeout=5)["data"]
    assert raw.startswith(b'{"event":' + big + b',"id":"m-1","topics":["channel:post_p1"],"pos":')
    env = json.loads(raw)
    assert env["pos"] == {"post_p1": [epoch, 1]} and isinstance(env["ts"], float)
    assert abs(env["ts"] - first.ts) < 1e-6

    # A union: every stream gets its next offset, one envelope carries them all.
    union = h.publish(["channel:post_p1", "user:u2"], event(2))
    user_epoch = union.positions["user_u2"][0]
    assert union.positions == {"post_p1": (epoch, 2), "user_u2": (user_epoch, 1)}
    copies = received(ps, 2)
    assert copies[0] == copies[1]                       # the same bytes to each topic
    assert copies[0]["id"] == union.id and copies[0]["topics"] == ["channel:post_p1", "user:u2"]
    assert copies[0]["pos"] == {"post_p1": [epoch, 2], "user_u2": [user_epoch, 1]}

    offsets = [h.publish(["channel:post_p1"], event(n)).positions["post_p1"][1] for n in range(3, 13)]
    assert offsets == list(range(3, 13))
    assert h.position("post_p1") == (epoch, 12)

    rec = h.since("post_p1", epoch, 0, 300)
    assert rec.ok and rec.top == 12 and len(rec.entries) == 12
    assert rec.entries[0] == raw                        # history holds the published bytes
    assert [json.loads(e)["pos"]["post_p1"][1] for e in rec.entries] == list(range(1, 13))
    rec = h.since("post_p1", epoch, 9, 300)
    assert rec.ok and [json.loads(e)["event"]["n"] for e in rec.entries] == [10, 11, 12]
    rec = h.since("post_p1", epoch, 12, 300)
    assert rec.ok and rec.entries == []                 # up to date: recovered, nothing to send
    ps.close()


def test_an_id_is_derived_when_none_is_given(rds):
    h = RedisHistory(rds, rds.test_prefix)
    one = h.publish(["channel:post_a"], event(1), message_id="")
    two = h.publish(["channel:post_a"], event(2), message_id="")
    assert len(one.id) == 32 and one.id != two.id


def test_not_recoverable_reasons(rds):
    h = RedisHistory(rds, rds.test_prefix, size=5)
    for n in range(1, 8):
        h.publish(["channel:post_t"], event(n))
    epoch, top = h.position("post_t")
    assert top == 7 and rds.llen(history_key(rds.test_prefix, "post_t")) == 5   # bounded

    assert h.since("post_t", epoch, 2, 300).ok                  # 3..7: exactly what is kept
    trimmed = h.since("post_t", epoch, 1, 300)                   # 2..7: event 2 is gone
    assert not trimmed.ok and trimmed.reason == TRIMMED and trimmed.entries == []
    assert (trimmed.epoch, trimmed.top) == (epoch, 7)            # the client learns where to resume
    many = h.since("post_t", epoch, 3, 3)                        # 4 missed, 3 accepted
    assert not many.ok and many.reason == TOO_MANY
    assert h.since("post_t", epoch, 4, 3).ok
    other = h.since("post_t", "not-the-epoch", 6, 300)
    assert not other.ok and other.reason == EPOCH
    ahead = h.since("post_t", epoch, 8, 300)                     # an offset this epoch never gave
    assert not ahead.ok and ahead.reason == AHEAD


def test_history_expires_but_the_position_stays(rds):
    h = RedisHistory(rds, rds.test_prefix, seconds=1)
    published = time.monotonic()
    h.publish(["channel:post_x"], event(1))
    epoch, _ = h.position("post_x")
    hist = history_key(rds.test_prefix, "post_x")
    # the list lives 1 s (TTL's rounding said 1 only within 0.5 s of the publish, and a
    # loaded machine can take longer to ask): what is left of it, or gone once 1 s passed
    left = rds.pttl(hist)
    assert 0 < left <= 1000 or (left == -2 and time.monotonic() - published >= 1), left
    assert rds.ttl(meta_key(rds.test_prefix, "post_x")) > 86000
    wait_until(lambda: not rds.exists(hist), 10, "the history list expiring")
    rec = h.since("post_x", epoch, 0, 300)
    assert not rec.ok and rec.reason == EXPIRED and (rec.epoch, rec.top) == (epoch, 1)
    assert h.since("post_x", epoch, 1, 300).ok                   # nothing missed: fine
    again = h.publish(["channel:post_x"], event(2))
    assert again.positions == {"post_x": (epoch, 2)}             # offsets go on in the same epoch


def test_a_busy_stream_does_not_replay_events_older_than_the_lifetime(rds):
    writer = RedisHistory(rds, rds.test_prefix, seconds=60)
    reader = RedisHistory(rds, rds.test_prefix, seconds=1)       # the same keys, a shorter lifetime
    old = writer.publish(["channel:post_b"], event(1))
    wait_until(lambda: redis_time(rds) > old.ts + 1.5, 10, "Redis time moving on")
    writer.publish(["channel:post_b"], event(2))
    epoch = old.positions["post_b"][0]
    rec = reader.since("post_b", epoch, 0, 300)                  # event 1 is too old: all or nothing
    assert not rec.ok and rec.reason == EXPIRED
    assert reader.since("post_b", epoch, 1, 300).ok


def test_meta_expiry_starts_a_new_epoch(rds):
    h = RedisHistory(rds, rds.test_prefix, meta_seconds=1)
    first = h.publish(["channel:post_m"], event(1))
    wait_until(lambda: not rds.exists(meta_key(rds.test_prefix, "post_m")), 10, "the meta expiring")
    second = h.publish(["channel:post_m"], event(2))
    (e1, o1), (e2, o2) = first.positions["post_m"], second.positions["post_m"]
    assert o1 == o2 == 1 and e1 != e2
    rec = h.since("post_m", e1, 1, 300)
    assert not rec.ok and rec.reason == EPOCH


def test_history_off_still_gives_positions(rds):
    h = RedisHistory(rds, rds.test_prefix, size=0)
    pub = h.publish(["channel:post_o"], event(1))
    epoch = pub.positions["post_o"][0]
    assert pub.positions == {"post_o": (epoch, 1)}
    assert not rds.exists(history_key(rds.test_prefix, "post_o"))
    assert h.since("post_o", epoch, 0, 300).reason == EXPIRED


@pytest.mark.parametrize("topics,payload,error", [
    (["channel:post p1"], b'{"type":"x"}', "bad topic"),
    (["post_p1"], b'{"type":"x"}', "bad topic"),
    (["channel:post_p1", "channel:post_p1"], b'{"type":"x"}', "listed twice"),
    (["channel:post_p1"], b'[{"type":"x"}]', "JSON object"),
    (["channel:post_p1"], b'{"type":"x"', "string type"),
    (["channel:post_p1"], b'{"kind":"x"}', "string type"),
    (["channel:post_p1"], b'{"type":""}', "string type"),
    ([f"channel:post_{i}" for i in range(65)], b'{"type":"x"}', "at most 64"),
])
def test_the_script_refuses_bad_input_and_publishes_nothing(rds, topics, payload, error):
    h = RedisHistory(rds, rds.test_prefix)
    ps = subscriber(rds, rds.test_prefix + "channel:post_p1")
    with pytest.raises(redis.ResponseError, match=error):
        h.publish(topics, payload)
    assert ps.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    assert list(rds.scan_iter(rds.test_prefix + "{*", count=1000)) == []
    ps.close()


def test_keys_must_match_the_topics(rds):
    h = RedisHistory(rds, rds.test_prefix)
    keys, args = h.publish_args(["channel:post_k"], event(1))
    keys[0] = rds.test_prefix + "{post_other}:m"                  # a caller's mistake
    with pytest.raises(redis.ResponseError, match="keys do not match"):
        h._publish(keys=keys, args=args)
    with pytest.raises(redis.ResponseError, match="id must be"):
        h.publish(["channel:post_k"], event(1), message_id="has space")
    assert list(rds.scan_iter(rds.test_prefix + "{*", count=1000)) == []


PUBLISHER = textwrap.dedent("""
    import json, sys
    import redis
    from fonana_realtime.redis_history import RedisHistory
    url, prefix, tag, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    h = RedisHistory(redis.Redis.from_url(url, protocol=2), prefix, size=count * 2 + 10)
    sys.stdin.readline()                            # start together
    out = []
    for i in range(count):
        pub = h.publish(["channel:post_race"], json.dumps({"type": "custom", "who": tag, "i": i}).encode())
        out.append(pub.positions["post_race"][1])
    print(json.dumps(out))
""")


def test_two_processes_publishing_to_one_stream_make_one_order(rds):
    count = 400
    p = rds.test_prefix
    ps = subscriber(rds, p + "channel:post_race")
    procs = [subprocess.Popen([sys.executable, "-c", PUBLISHER, SHARED_URL, p, tag, str(count)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True)
             for tag in ("a", "b")]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    answers = {}
    for tag, proc in zip("ab", procs):
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        answers[tag] = json.loads(out)
    for offsets in answers.values():
        assert offsets == sorted(offsets)               # each publisher sees its own go up
    assert sorted(answers["a"] + answers["b"]) == list(range(1, 2 * count + 1))   # no dup, no gap
    live = received(ps, 2 * count)
    # The live order IS the offset order: offset and PUBLISH are one atomic step.
    assert [env["pos"]["post_race"][1] for env in live] == list(range(1, 2 * count + 1))
    mine = {tag: [env["event"]["i"] for env in live if env["event"]["who"] == tag] for tag in "ab"}
    assert mine == {"a": list(range(count)), "b": list(range(count))}
    h = RedisHistory(rds, p, size=2 * count + 10)
    epoch, top = h.position("post_race")
    rec = h.since("post_race", epoch, 0, 10 * count)
    assert rec.ok and top == 2 * count
    assert [json.loads(e) for e in rec.entries] == live  # history = what went live, in order
    ps.close()


def test_redis_losing_its_data_gives_a_new_epoch(tmp_path):
    srv = RedisServer(tmp_path).start()
    try:
        r = srv.client()
        h = RedisHistory(r, "fonana:rt:")
        for n in range(1, 4):
            h.publish(["channel:post_r", "user:u9"], event(n))
        old_epoch, top = h.position("post_r")
        assert top == 3
        srv.restart()                                   # SIGKILL, no persistence: data and scripts gone
        assert r.dbsize() == 0 and not r.script_exists(h._publish.sha)[0]
        rec = h.since("post_r", old_epoch, 3, 300)      # the client was up to date, but ...
        assert not rec.ok and rec.reason == EPOCH   # ... its offsets mean nothing now
        new_epoch = rec.epoch
        assert new_epoch != old_epoch and rec.top == 0
        pub = h.publish(["channel:post_r", "user:u9"], event(4))   # EVALSHA -> NOSCRIPT -> loaded again
        assert pub.positions["post_r"] == (new_epoch, 1)
        assert pub.positions["user_u9"][1] == 1
        assert not h.since("post_r", old_epoch, 0, 300).ok
        rec = h.since("post_r", new_epoch, 0, 300)
        assert rec.ok and [json.loads(e)["event"]["n"] for e in rec.entries] == [4]
        r.close()
    finally:
        srv.stop()


def script_exists_calls(r) -> int:
    return r.info("commandstats").get("cmdstat_script|exists", {}).get("calls", 0)


def test_pipelined_reads_cost_one_round_trip_and_survive_a_script_flush(tmp_path):
    """positions and since_many, the reads a worker makes for many streams at once (before
    SUBSCRIBE, catching up), send one pipeline: no `SCRIPT EXISTS` round trip first, as a
    pipeline of redis-py Scripts would. A Redis that lost its scripts gets them again."""
    srv = RedisServer(tmp_path).start()
    try:
        r = srv.client()
        h = RedisHistory(r, "fonana:rt:")
        h.publish(["channel:post_a"], event(1))
        h.publish(["channel:post_a", "channel:post_b"], event(2))
        exists = script_exists_calls(r)
        positions = h.positions(["post_a", "post_b", "post_new"])
        assert positions == [h.position("post_a"), h.position("post_b"), h.position("post_new")]
        assert [top for _, top in positions] == [2, 1, 0]
        epoch_a = positions[0][0]
        recs = h.since_many([("post_a", epoch_a, 0), ("post_b", positions[1][0], 1)], 300)
        assert [rec.ok for rec in recs] == [True, True]
        assert [json.loads(e)["event"]["n"] for e in recs[0].entries] == [1, 2] and recs[1].entries == []
        assert script_exists_calls(r) == exists
        r.script_flush()
        assert h.positions(["post_a"]) == [(epoch_a, 2)]
        r.script_flush()
        (rec,) = h.since_many([("post_a", epoch_a, 1)], 300)
        assert rec.ok and [json.loads(e)["event"]["n"] for e in rec.entries] == [2]
        r.close()
    finally:
        srv.stop()


def test_redis_cli_eval_of_the_shipped_script(rds):
    """docs/PUBLISHING.md: an outside process publishes with positions by running the
    shipped file (here redis-cli --eval; ioredis's defineCommand/EVALSHA is the same)."""
    p = rds.test_prefix
    ps = subscriber(rds, p + "channel:post_cli")
    cmd = ["redis-cli", "-u", SHARED_URL, "--eval", str(PUBLISH_SCRIPT_PATH),
           f"{p}{{post_cli}}:m", f"{p}{{post_cli}}:h", ",",
           '{"type":"post_liked","postId":"cli","userId":"u2","likesCount":5}', "", "100", "300",
           "86400", p, "channel:post_cli"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout.split("\n")
    assert out[0] == "1" and len(out[1]) == 32                  # receivers, derived id
    env = received(ps, 1)[0]
    assert env["event"]["likesCount"] == 5 and env["pos"]["post_cli"] == [out[3], 1]
    h = RedisHistory(rds, p)
    assert h.since("post_cli", out[3], 0, 300).ok
    ps.close()


def test_the_decoder_reads_positions_and_stored_envelopes_leave_its_id_cache_alone(rds):
    from fonana_realtime import wire
    h = RedisHistory(rds, rds.test_prefix)
    ps = subscriber(rds, rds.test_prefix + "channel:post_d")
    pub = h.publish(["channel:post_d", "user:ud"], event(1))
    live = ps.get_message(ignore_subscribe_messages=True, timeout=5)["data"]
    stored = h.since("post_d", pub.positions["post_d"][0], 0, 300).entries[0]
    assert stored == live

    decoder = wire.Decoder()
    replayed = decoder.decode_stored("post_d", stored)
    assert replayed.positions == pub.positions and replayed.id == pub.id
    assert replayed.topics == ["channel:post_d", "user:ud"]
    first = decoder.decode("channel:post_d", live)          # the live copy after a replay: delivered
    assert first is not None and first.positions == pub.positions and first.id == pub.id
    assert decoder.decode("user:ud", live) is None           # its second copy: dropped by id
    assert decoder.decode_stored("user_ud", stored).id == pub.id   # a replay after it: still there
    ps.close()

    for bad in ('{"post_d":["e",0]}', '{"post_d":["e",true]}', '{"post_d":[1,2]}', '["e",1]',
                '{"post_d":["e",1,2]}', '{"post_d":["' + "e" * 65 + '",1]}'):
        msg = wire.Decoder().decode("channel:post_d", b'{"event":{"type":"x"},"pos":' + bad.encode() + b'}')
        assert msg is not None and msg.positions == {}       # delivered live, without positions
