"""Legacy pacing on its own (PROTOCOL.md 8): pure logic, driven by a fake clock.

Connections are recorders that note when each write happened; `Ev` stands for an
`Outgoing` (type, conflation key, legacy frame, streams).
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import gevent
import gevent.event

from fonana_realtime import pacing
from fonana_realtime.pacing import Pacer

GAP = 0.120


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Ev:
    """What pacing reads of an Outgoing."""

    def __init__(self, type_, stream, conflate=None, **fields):
        self.type = type_
        self.conflate = conflate or False
        self.streams = [stream]
        self.event = {"type": type_, **fields}
        self.legacy = json.dumps(self.event).encode()


def like(post, count, kind="post_liked"):
    return Ev(kind, "post_" + post, "post:" + post, postId=post, likesCount=count)


def notification(user, n):
    return Ev("notification", "user_" + user, userId=user, n=n)


def comment(post, n):
    return Ev("comment_added", "post_" + post, postId=post, n=n)


class Conn:
    def __init__(self, clock, backlog_frames=1000, backlog_bytes=1 << 20):
        self.clock = clock
        self.pace = None
        self.closing = self.closed = False
        self.backlog = None
        self.backlog_bytes = self.backlog_frames = 0
        self.settings = SimpleNamespace(send_backlog_frames=backlog_frames, send_backlog_bytes=backlog_bytes)
        self.writes: list[tuple[float, list[dict]]] = []     # (time, events of one write)
        self.overflowed = False

    def send(self, data, frames=1):
        if self.closing or self.closed:
            return False
        events = [json.loads(line) for line in data.decode().replace("}{", "}\n{").splitlines()]
        assert len(events) == frames
        self.writes.append((self.clock(), events))
        return True

    def paced(self, pace):
        self.pace = pace
        return pace

    def unpaced(self):
        self.pace = None

    def overflow(self):
        self.overflowed = True
        self.closing = self.closed = True

    def events(self):
        return [e for _, es in self.writes for e in es]

    def times_by_type(self):
        out: dict[str, list[float]] = {}
        for t, es in self.writes:
            for e in es:
                out.setdefault(e["type"], []).append(t)
        return out


def run_until_idle(pacer, clock, limit=10_000):
    """Advance the fake clock from due time to due time until nothing waits."""
    for _ in range(limit):
        if not pacer._heap:
            return
        clock.now = max(clock.now, pacer._heap[0][0])
        pacer.run_due()
    raise AssertionError("pacer never went idle")


def assert_gap_kept(conn):
    for kind, times in conn.times_by_type().items():
        for a, b in zip(times, times[1:]):
            assert b - a >= GAP - 1e-9, f"two {kind} frames {b - a:.3f}s apart"


def setup():
    clock = Clock()
    return clock, Pacer(GAP, clock=clock), Conn(clock)


def test_an_idle_connection_holds_no_state_and_gets_a_lone_event_at_once():
    clock, pacer, conn = setup()
    assert conn.pace is None
    assert pacer.offer(conn, [like("p", 1)])
    assert conn.writes == [(clock.now, [like("p", 1).event])]
    assert not conn.pace.waiting and not pacer._heap      # nothing waits: no schedule
    clock.now += pacing.PRUNE_SECONDS
    pacer.run_due()
    assert conn.pace is None and conn not in pacer.active  # quiet again: the state is dropped


def test_different_types_go_together_in_one_write():
    clock, pacer, conn = setup()
    batch = [like("p", 1), notification("u", 1), comment("q", 1)]
    assert pacer.offer(conn, batch)
    assert len(conn.writes) == 1 and conn.events() == [e.event for e in batch]


def test_the_same_type_never_goes_twice_within_the_gap():
    clock, pacer, conn = setup()
    pacer.offer(conn, [notification("u", 1), notification("u", 2)])
    assert conn.events() == [notification("u", 1).event]
    clock.now += GAP - 0.001
    pacer.run_due()
    assert len(conn.events()) == 1                   # not due yet
    clock.now += 0.001
    pacer.run_due()
    assert [e["n"] for e in conn.events()] == [1, 2]
    assert_gap_kept(conn)


def test_a_second_offer_within_the_gap_waits_for_the_first():
    clock, pacer, conn = setup()
    pacer.offer(conn, [notification("u", 1)])
    clock.now += 0.030
    pacer.offer(conn, [notification("u", 2)])
    assert len(conn.writes) == 1
    run_until_idle(pacer, clock)
    assert [e["n"] for e in conn.events()] == [1, 2]
    assert conn.writes[1][0] == conn.writes[0][0] + GAP


def test_unconflated_types_all_arrive_in_order():
    clock, pacer, conn = setup()
    pacer.offer(conn, [notification("u", n) for n in range(1, 4)])
    clock.now += 0.010
    pacer.offer(conn, [notification("u", n) for n in range(4, 6)])
    run_until_idle(pacer, clock)
    assert [e["n"] for e in conn.events()] == [1, 2, 3, 4, 5]
    assert_gap_kept(conn)


def test_likes_across_posts_end_with_every_final_count():
    """30 post_liked for 3 posts in one list publish (the issue's scenario)."""
    clock, pacer, conn = setup()
    batch = [like("p%d" % (i % 3), i) for i in range(30)]
    pacer.offer(conn, batch)
    run_until_idle(pacer, clock)
    final: dict[str, int] = {}
    for e in conn.events():
        final[e["postId"]] = e["likesCount"]
    assert final == {"p0": 27, "p1": 28, "p2": 29}
    assert len(conn.events()) <= 4           # the first, then one per post at most
    assert_gap_kept(conn)


def test_liked_and_unliked_of_one_post_share_one_waiting_slot():
    """One key per postId across both types: the latest likesCount wins whatever its type."""
    clock, pacer, conn = setup()
    pacer.offer(conn, [like("p", 4), like("q", 3, "post_unliked")])    # both types just written
    pacer.offer(conn, [like("p", 5)])                                    # waits
    pacer.offer(conn, [like("p", 4, "post_unliked")])                   # replaces it
    pacer.offer(conn, [like("p", 5)])                                    # replaces that
    assert len(conn.pace.waiting) == 1
    run_until_idle(pacer, clock)
    assert [(e["type"], e["likesCount"]) for e in conn.events()] == [
        ("post_liked", 4), ("post_unliked", 3), ("post_liked", 5)]


def test_a_replaced_slot_waits_for_its_new_types_gap():
    clock, pacer, conn = setup()
    pacer.offer(conn, [like("p", 1), like("q", 1)])          # q waits behind p's post_liked
    pacer.offer(conn, [like("q", 0, "post_unliked")])       # now a post_unliked: no gap to wait
    assert [(e["type"], e["postId"]) for e in conn.events()] == [("post_liked", "p"), ("post_unliked", "q")]
    assert not conn.pace.waiting


def test_creator_and_feed_updates_conflate_per_id():
    clock, pacer, conn = setup()
    def creator(c, n):
        return Ev("creator_updated", "creator_" + c, "creator:" + c, creatorId=c, n=n)
    def feed(u, n):
        return Ev("feed_update", "user_" + u, "feed:" + u, userId=u, n=n)
    pacer.offer(conn, [creator("a", 1), creator("a", 2), creator("b", 1), creator("a", 3),
                       feed("u", 1), feed("u", 2)])
    run_until_idle(pacer, clock)
    got = [(e["type"], e.get("creatorId") or e.get("userId"), e["n"]) for e in conn.events()]
    assert sorted(got) == sorted([("creator_updated", "a", 3), ("creator_updated", "b", 1),
                                  ("feed_update", "u", 2)])
    assert_gap_kept(conn)


def test_a_frame_waits_behind_an_earlier_frame_of_its_stream_only():
    clock, pacer, conn = setup()
    pacer.offer(conn, [like("p", 1)])
    pacer.offer(conn, [like("p", 2), comment("p", 1), comment("q", 1)])
    # like p 2 waits for the gap; the comment on p waits behind it; the comment on q goes
    assert [(e["type"], e["postId"]) for e in conn.events()] == [("post_liked", "p"), ("comment_added", "q")]
    run_until_idle(pacer, clock)
    tail = [(e["type"], e["postId"], e.get("likesCount", e.get("n"))) for e in conn.events()[2:]]
    assert tail == [("post_liked", "p", 2), ("comment_added", "p", 1)]
    assert_gap_kept(conn)


def test_a_notification_burst_does_not_hold_back_other_streams():
    clock, pacer, conn = setup()
    pacer.offer(conn, [notification("u", n) for n in range(10)])
    clock.now += 0.010
    pacer.offer(conn, [like("p", 1)])
    assert ("post_liked", clock.now) in [(e["type"], t) for t, es in conn.writes for e in es]
    run_until_idle(pacer, clock)
    assert [e["n"] for e in conn.events() if e["type"] == "notification"] == list(range(10))


def test_waiting_frames_count_against_the_backlog_frame_limit():
    clock = Clock()
    pacer, conn = Pacer(GAP, clock=clock), Conn(clock, backlog_frames=5)
    assert pacer.offer(conn, [notification("u", n) for n in range(6)])   # 1 written, 5 wait
    assert not conn.overflowed
    assert not pacer.offer(conn, [notification("u", 6)])                   # 6 waiting > 5
    assert conn.overflowed and not conn.pace.waiting


def test_conflated_frames_do_not_grow_the_backlog():
    clock = Clock()
    pacer, conn = Pacer(GAP, clock=clock), Conn(clock, backlog_frames=3)
    for n in range(100):
        assert pacer.offer(conn, [like("p", n)])
    assert not conn.overflowed and len(conn.pace.waiting) == 1


def test_waiting_bytes_add_to_the_socket_backlog_bytes():
    clock = Clock()
    pacer, conn = Pacer(GAP, clock=clock), Conn(clock, backlog_bytes=400)
    conn.backlog, conn.backlog_bytes = object(), 300      # what the socket has not taken yet
    pacer.offer(conn, [notification("u", 1)])
    assert conn.pace.waiting and not conn.overflowed     # held: the socket backlog is not empty
    assert not pacer.offer(conn, [notification("u", 2), notification("u", 3)])
    assert conn.overflowed


def test_nothing_is_handed_over_while_the_socket_backlog_is_not_empty():
    clock, pacer, conn = setup()
    conn.backlog = ["unsent"]
    pacer.offer(conn, [like("p", 1)])
    assert conn.writes == []
    pacer.offer(conn, [like("p", 2)])
    clock.now += GAP
    conn.backlog = None                       # drained
    pacer.run_due()
    assert [e["likesCount"] for e in conn.events()] == [2]


def test_a_closed_connection_gets_nothing_and_holds_nothing():
    clock, pacer, conn = setup()
    pacer.offer(conn, [notification("u", 1), notification("u", 2)])
    conn.closing = True
    clock.now += GAP
    pacer.run_due()
    assert len(conn.events()) == 1 and not conn.pace.waiting
    assert not pacer.offer(conn, [notification("u", 3)])
    conn.closed = True
    clock.now += pacing.PRUNE_SECONDS
    pacer.run_due()
    assert conn not in pacer.active


def test_written_frames_are_reported_with_their_events():
    clock = Clock()
    written = []
    pacer = Pacer(GAP, clock=clock, on_written=lambda c, outs: written.append([o.event["n"] for o in outs]))
    conn = Conn(clock)
    pacer.offer(conn, [notification("u", 1), notification("u", 2)])
    run_until_idle(pacer, clock)
    assert written == [[1], [2]]


def test_the_scheduler_greenlet_writes_held_frames_on_time_by_itself():
    pacer = Pacer(0.02)
    done = gevent.event.Event()

    class Live(Conn):
        def send(self, data, frames=1):
            ok = super().send(data, frames)
            if len(self.events()) == 3:
                done.set()
            return ok

    import time
    conn = Live(time.monotonic)
    pacer.start()
    pacer.offer(conn, [notification("u", n) for n in range(3)])
    assert done.wait(5), "held frames were never written"
    assert [e["n"] for e in conn.events()] == [0, 1, 2]
    for a, b in zip(conn.writes, conn.writes[1:]):
        assert b[0] - a[0] >= 0.02


def test_held_frames_waits_reach_the_histogram_once_per_turn():
    """Counted in process (BatchedHistogram), exposed as if each had been observed."""
    from prometheus_client import REGISTRY

    def buckets():
        out = {}
        for family in REGISTRY.collect():
            if family.name == "fonana_rt_legacy_hold_seconds":
                for sample in family.samples:
                    if sample.name.endswith("_bucket"):
                        out[sample.labels["le"]] = sample.value
        return out

    def count():
        return REGISTRY.get_sample_value("fonana_rt_legacy_hold_seconds_count") or 0.0

    before, before_buckets = count(), buckets()
    clock, pacer, conn = setup()
    pacer.offer(conn, [notification("u", n) for n in range(3)])     # 2 held: 0.12 s and 0.24 s
    run_until_idle(pacer, clock)
    pacer._count()
    after = buckets()
    assert count() - before == 2
    assert after["0.125"] - before_buckets["0.125"] == 1            # 0.12 ≤ 0.125
    assert after["0.3"] - before_buckets["0.3"] == 2                # cumulative: 0.24 ≤ 0.3
    assert after["0.1"] - before_buckets["0.1"] == 0


# ---- re-sends of the latest state (issue 17) -------------------------------------------

CONFIRM = 2 * GAP


def confirming():
    clock = Clock()
    written = []
    pacer = Pacer(GAP, clock=clock, confirm_after=CONFIRM,
                  on_written=lambda c, outs: written.extend(o.event for o in outs))
    return clock, pacer, Conn(clock), written


def test_each_posts_latest_count_is_written_once_more_after_its_type_went_quiet():
    clock, pacer, conn, written = confirming()
    burst = [like(p, n) for n in range(1, 11) for p in ("a", "b", "c")]
    assert pacer.offer(conn, burst + [notification("u", 1), notification("u", 2)])
    run_until_idle(pacer, clock)
    likes = [(e["postId"], e["likesCount"]) for e in conn.events() if e["type"] == "post_liked"]
    assert sorted(likes[:3]) == [("a", 10), ("b", 10), ("c", 10)]
    assert sorted(likes[3:]) == sorted(likes[:3])               # each once more, nothing else
    assert [e["n"] for e in conn.events() if e["type"] == "notification"] == [1, 2]   # never re-sent
    times = conn.times_by_type()["post_liked"]
    assert all(b - a >= CONFIRM - 1e-9 for a, b in zip(times[2:], times[3:]))   # each after a quiet spell
    assert_gap_kept(conn)
    assert len(written) == 5                                     # a re-send is not a new event written
    assert conn.pace is not None and not conn.pace.confirm


def test_a_newer_state_on_its_way_replaces_the_re_send():
    clock, pacer, conn, _ = confirming()
    assert pacer.offer(conn, [like("a", 1)])
    clock.now += CONFIRM / 2
    assert pacer.offer(conn, [like("a", 2)])
    run_until_idle(pacer, clock)
    assert [e["likesCount"] for e in conn.events()] == [1, 2, 2]      # 1 is never written again


def test_a_type_that_never_goes_quiet_is_not_re_sent_until_it_does():
    clock, pacer, conn, _ = confirming()
    for n in range(1, 21):                                     # a hot post: a like every 100 ms
        assert pacer.offer(conn, [like("a", n)])
        clock.now += 0.100
        pacer.run_due()
    counts = [e["likesCount"] for e in conn.events()]
    assert counts == sorted(counts) and len(counts) == len(set(counts))   # no repeat while busy
    run_until_idle(pacer, clock)
    assert [e["likesCount"] for e in conn.events()][-2:] == [20, 20]


def test_a_bug_while_writing_one_connection_closes_it_1011_and_spares_the_others():
    clock, pacer, conn = setup()
    other = Conn(clock)
    conn.id, conn.user_id, other.id, other.user_id = 1, "u1", 2, "u2"
    closed = []
    conn.close = closed.append
    for c in (conn, other):
        assert pacer.offer(c, [comment("p", 1), comment("p", 2)])
    conn.send = lambda data, frames=1: 1 / 0                     # the bug
    run_until_idle(pacer, clock)
    assert closed == [1011]                                      # the client reconnects and resumes
    assert not conn.pace.waiting
    assert [e["n"] for e in other.events()] == [1, 2]


def test_types_that_are_never_re_sent_keep_the_wider_gap():
    clock = Clock()
    pacer, conn = Pacer(GAP, clock=clock, solo_gap=1.5 * GAP), Conn(clock)
    assert pacer.offer(conn, [notification("u", n) for n in range(1, 5)] + [like("a", n) for n in range(1, 4)])
    assert pacer.offer(conn, [like("b", 1)])
    run_until_idle(pacer, clock)
    times = conn.times_by_type()
    assert all(b - a >= 1.5 * GAP - 1e-9 for a, b in zip(times["notification"], times["notification"][1:]))
    assert min(b - a for a, b in zip(times["post_liked"], times["post_liked"][1:])) < 1.5 * GAP
    assert [e["n"] for e in conn.events() if e["type"] == "notification"] == [1, 2, 3, 4]
