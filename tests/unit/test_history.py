"""The in-process history on its own (history.py), with a fake clock."""
from __future__ import annotations

from fonana_realtime import history as h
from fonana_realtime.wire import Message


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _history(size=5, seconds=300, meta=3600):
    clock = Clock()
    return h.MemoryHistory(size, seconds, meta, clock), clock


def _msg(n):
    return Message(b'{"type":"x","n":%d}' % n, ["channel:post_p"])


def test_offsets_are_consecutive_per_stream_and_epochs_differ_per_start():
    store, _ = _history()
    assert [store.append("post_p", _msg(n))[1] for n in range(3)] == [1, 2, 3]
    assert store.append("post_q", _msg(0))[1] == 1
    epoch, top = store.position("post_p")
    assert top == 3 and epoch == store.append("post_p", _msg(9))[0]
    other, _ = _history()
    assert other.position("post_p")[0] != epoch          # a new process: a new epoch


def test_history_after_an_offset_is_all_the_missed_events_in_order():
    store, _ = _history()
    msgs = [_msg(n) for n in range(4)]
    for m in msgs:
        store.append("post_p", m)
    epoch, _ = store.position("post_p")
    got = store.history("post_p", epoch, 1, 300)
    assert got.ok and got.top == 4 and got.events == msgs[1:]
    assert store.history("post_p", epoch, 4, 300).events == [] and store.history("post_p", epoch, 4, 300).ok
    assert store.history("post_p", epoch, 0, 300).events == msgs


def test_each_failure_has_its_reason_and_replays_nothing():
    store, clock = _history(size=5, seconds=300)
    for n in range(8):
        store.append("post_p", _msg(n))
    epoch, _ = store.position("post_p")
    assert store.history("post_p", "other", 7, 300).reason == h.EPOCH
    assert store.history("post_p", epoch, 9, 300).reason == h.AHEAD
    trimmed = store.history("post_p", epoch, 2, 300)         # offsets 1..3 were pushed out
    assert (trimmed.ok, trimmed.reason, trimmed.events) == (False, h.TRIMMED, [])
    assert store.history("post_p", epoch, 3, 300).ok          # 4..8 are all there
    assert store.history("post_p", epoch, 3, 4).reason == h.TOO_MANY
    clock.now += 301
    expired = store.history("post_p", epoch, 7, 300)
    assert (expired.ok, expired.reason) == (False, h.EXPIRED)
    assert store.history("post_p", epoch, 8, 300).ok           # nothing missed: still fine


def test_a_forgotten_meta_comes_back_with_a_new_epoch():
    store, clock = _history(meta=60)
    store.append("post_p", _msg(1))
    epoch, _ = store.position("post_p")
    clock.now += 61
    store.sweep()
    assert store.counts() == (0, 0)
    again, top = store.position("post_p")
    assert again != epoch and top == 0
    assert store.history("post_p", epoch, 1, 300).reason == h.EPOCH


def test_sweep_forgets_expired_events_and_keeps_fresh_ones():
    store, clock = _history(size=100, seconds=300)
    for n in range(10):
        store.append("post_old", _msg(n))
    clock.now += 200
    store.append("post_new", _msg(0))
    clock.now += 150                                          # old ones are 350 s old
    store.sweep()
    assert store.counts() == (2, 1)                           # both metas; one event
    assert store.approx_bytes() > 0
    clock.now += 200
    store.sweep()
    assert store.counts() == (2, 0) and store.payload_bytes == 0


# -- ghosts and the total bound (issue 18.3, 18.7) --------------------------------------------------

def aged(store, clock, seconds):
    """`seconds` go by, then the broker's periodic sweep."""
    clock.now += seconds
    store.sweep()


def test_positions_asked_of_streams_nobody_publishes_to_are_forgotten_within_a_minute():
    """v2 subscribes to ids nobody publishes to kept ~300 B each for 24 h (5,517: +3.8 MB)."""
    store, clock = _history(meta=86400)
    for n in range(100):
        store.position(f"creator_ghost{n}")
    aged(store, clock, 61)
    assert store.counts() == (0, 0)


def test_a_stream_nobody_published_to_is_forgotten_a_minute_after_its_last_subscriber():
    store, clock = _history()
    store.hold("creator_x")
    epoch, top = store.position("creator_x")                 # a subscribe: the ghost's epoch
    store.position("creator_y")                              # asked, never held (a refused subscribe)
    assert top == 0 and store.counts() == (2, 0)
    aged(store, clock, h.GHOST_SECONDS + 1)
    assert store.counts() == (1, 0)                          # the held one stays
    aged(store, clock, 3600)
    assert store.position("creator_x") == (epoch, 0)         # held all along: the same epoch
    store.release("creator_x")
    aged(store, clock, h.GHOST_SECONDS - 1)
    assert store.counts() == (1, 0)
    aged(store, clock, 2)
    assert store.counts() == (0, 0)


def test_the_first_publish_keeps_the_ghosts_epoch_so_its_subscriber_recovers():
    store, clock = _history()
    store.hold("creator_x")
    epoch, top = store.position("creator_x")
    store.release("creator_x")                               # the subscriber went away
    clock.now += 30
    msg = _msg(1)
    assert store.append("creator_x", msg) == (epoch, 1)
    got = store.history("creator_x", epoch, 0, 300)
    assert got.ok and got.events == [msg]
    aged(store, clock, h.GHOST_SECONDS * 10)
    assert store.peek("creator_x") == (epoch, 1)             # published: the meta's full lifetime


def test_a_ghost_forgotten_before_the_first_publish_is_another_epoch_never_wrong_events():
    store, clock = _history()
    epoch, _ = store.position("creator_x")
    aged(store, clock, h.GHOST_SECONDS + 1)
    store.append("creator_x", _msg(1))
    got = store.history("creator_x", epoch, 0, 300)
    assert (got.ok, got.reason, got.events) == (False, h.EPOCH, [])


def test_the_stream_bound_evicts_ghosts_then_the_least_used_and_recovery_stays_honest():
    clock = Clock()
    store = h.MemoryHistory(5, 300, 3600, clock, max_streams=3)
    store.append("post_a", _msg(1))
    epoch_a, _ = store.position("post_a")
    store.append("post_b", _msg(1))
    store.position("creator_ghost")
    store.append("post_c", _msg(1))                          # 4 > 3: the ghost goes first
    assert store.counts() == (3, 3) and store.evicted_streams == 1
    store.position("post_b")                                 # b used; a is the least recently used
    store.append("post_d", _msg(1))
    assert store.counts() == (3, 3) and store.evicted_streams == 2
    assert store.peek("post_a") is None
    got = store.history("post_a", epoch_a, 0, 300)           # evicted: never a wrong replay
    assert (got.ok, got.reason, got.events) == (False, h.EPOCH, [])


def test_the_byte_bound_drops_the_least_recently_appended_events_first():
    clock = Clock()
    payload = b'{"type":"x","pad":"' + b"p" * 1000 + b'"}'
    one = h.STREAM_OVERHEAD + h.EVENT_OVERHEAD + len(payload)
    store = h.MemoryHistory(100, 300, 3600, clock, max_bytes=10 * one)
    for _ in range(6):
        store.append("post_old", Message(payload, ["channel:post_old"]))
    epoch_old, _ = store.position("post_old")
    for _ in range(6):
        store.append("post_new", Message(payload, ["channel:post_new"]))
    assert store.approx_bytes() <= 10 * one
    assert store.evicted_events == 6 and store.counts() == (2, 6)
    got = store.history("post_old", epoch_old, 2, 300)       # its events went: told so, not replayed
    assert (got.ok, got.reason) == (False, h.TRIMMED)
    assert store.history("post_new", store.position("post_new")[0], 0, 300).ok
