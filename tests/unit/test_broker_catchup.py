"""Catching up after a lost link, as pure logic (broker/catchup.py): marks, held live
messages, the history answers of one catch-up and what goes on, in which order. The same
behaviour against real Redis and real workers: tests/test_redis_catchup.py,
tests/test_redis_sentinel.py."""
from __future__ import annotations

from fonana_realtime.broker.catchup import Catchup
from fonana_realtime.history import EPOCH, TRIMMED
from fonana_realtime.redis_history import StoredRead
from fonana_realtime.wire import Message


def msg(n, ts=None, **positions):
    return Message(b"{}", ["channel:x"], published_at=ts if ts is not None else float(n),
                   message_id=f"m{n}", positions=positions)


def hears(stream):
    return stream in ("s", "t")


def ids(messages):
    return [m.id for m in messages]


def test_a_message_goes_on_once_and_moves_the_mark():
    c = Catchup()
    c.baseline("s", ("E", 3))
    assert c.take_baseline("s") == ("E", 3) and c.take_baseline("s") is None
    assert c.receive(msg(4, s=("E", 4)), hears)
    assert c.mark("s") == ("E", 4)
    assert not c.receive(msg(4, s=("E", 4)), hears)         # the same offset again
    assert not c.receive(msg(2, s=("E", 2)), hears)         # older
    assert c.receive(msg(9, s=("F", 1)), hears)             # another epoch is news
    assert c.mark("s") == ("F", 1)


def test_a_union_goes_on_when_any_marked_stream_is_new_and_unheard_streams_get_no_mark():
    c = Catchup()
    c.baseline("s", ("E", 5))
    assert not c.receive(msg(1, s=("E", 5), u=("U", 1)), hears)     # s known, u not heard
    assert c.mark("u") is None
    assert c.receive(msg(2, s=("E", 5), t=("T", 1)), hears)         # t heard: its first mark
    assert c.mark("t") == ("T", 1)
    assert c.receive(Message(b"{}", ["channel:x"]), hears)         # no positions: always


def test_catching_up_holds_live_messages_then_replays_in_order_without_duplicates():
    c = Catchup()
    c.baseline("s", ("E", 2))
    c.baseline("t", ("T", 0))
    c.link_up()
    assert not c.receive(msg(5, s=("E", 5)), hears)         # held
    assert c.requests(hears) == [("s", "E", 2), ("t", "T", 0)]
    assert c.first_held() == {("s", "E"): 5}
    replayed = [[msg(3, s=("E", 3)), msg(4, s=("E", 4)), msg(5, s=("E", 5))],
                [msg(1, ts=3.5, t=("T", 1))]]
    out, count = c.finish(replayed, hears)
    assert ids(out) == ["m3", "m1", "m4", "m5"]             # merged by publication time
    assert count == 4                                       # the held copy of 5 is not sent twice
    assert not c.catching_up and c.receive(msg(6, s=("E", 6)), hears)


def test_a_new_epoch_is_read_again_from_its_start_and_lost_history_gives_up_past_the_held():
    c = Catchup()
    c.baseline("s", ("E", 7))
    c.baseline("t", ("T", 2))
    c.link_up()
    c.receive(msg(20, t=("T", 20)), hears)
    first, lost = c.first_held(), {}
    again = c.settle("s", StoredRead(False, "F", 3, reason=EPOCH), first, lost, again=False)
    assert again == ("s", "F", 0) and lost == {}
    assert c.settle("t", StoredRead(False, "T", 20, reason=TRIMMED), first, lost, again=False) is None
    assert lost == {TRIMMED: 1} and c.mark("t") == ("T", 19)       # the held 20 still goes on
    assert c.settle("s", StoredRead(False, "G", 1, reason=EPOCH), first, lost, again=True) is None
    assert lost == {TRIMMED: 1, EPOCH: 1} and c.mark("s") == ("G", 1)
    out, count = c.finish([], hears)
    assert ids(out) == ["m20"] and count == 0


def test_a_lost_link_drops_what_it_held_and_a_stream_no_longer_heard_is_forgotten():
    c = Catchup()
    c.baseline("s", ("E", 1))
    c.link_up()
    c.receive(msg(2, s=("E", 2)), hears)
    c.link_lost()
    assert c.first_held() == {}                 # the next catch-up reads it from history
    c.forget("s")
    assert c.mark("s") is None and c.take_baseline("s") is None and c.unmarked(["s"]) == ["s"]


def test_a_resubscribed_stream_catches_up_while_the_others_go_on():
    """One shard's connection lost (Cluster): only its streams are held and read again."""
    c = Catchup()
    c.baseline("s", ("E", 2))
    c.baseline("t", ("T", 0))
    c.resubscribed(["s"])
    assert c.catching_up
    assert not c.receive(msg(3, s=("E", 3)), hears)         # s catches up: held
    assert c.receive(msg(1, t=("T", 1)), hears)             # t goes on
    assert c.requests(hears) == [("s", "E", 2)]
    out, count = c.finish([[msg(3, s=("E", 3))]], hears)
    assert ids(out) == ["m3"] and count == 1 and not c.catching_up


def test_a_union_held_for_one_stream_holds_the_later_messages_of_its_other_streams():
    c = Catchup()
    c.baseline("s", ("E", 2))
    c.resubscribed(["s"])
    assert not c.receive(msg(3, s=("E", 3), t=("T", 1)), hears)     # held: s catches up
    assert not c.receive(msg(4, t=("T", 2)), hears)                 # must not overtake it
    out, _ = c.finish([], hears)
    assert ids(out) == ["m3", "m4"]


def test_a_lost_shard_drops_its_held_messages_and_leaves_the_catch_up_of_the_others():
    c = Catchup()
    c.baseline("s", ("E", 2))
    c.baseline("t", ("T", 0))
    c.resubscribed(["s", "t"])
    c.receive(msg(3, s=("E", 3)), hears)
    c.receive(msg(1, t=("T", 1)), hears)
    c.shard_lost(["s"])                     # its connection is gone: history has m3
    assert c.requests(hears) == [("t", "T", 0)]
    out, _ = c.finish([], hears)
    assert ids(out) == ["m1"] and c.mark("s") == ("E", 2)
