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
