"""The Redis listener's bookkeeping, alone: which topics are wanted, which SUBSCRIBEs are
written where, who waits for an acknowledgement (broker/subscriptions.py), and its
connections by shard (broker/shards.py). The same against real Redis and a real Cluster:
tests/test_redis_fanout.py, tests/test_redis_cluster.py."""
from __future__ import annotations

import time

from fonana_realtime.broker.shards import Shards
from fonana_realtime.broker.subscriptions import Subscriptions

SHARD = {"a": "A", "b": "B", "c": "B"}.get


def test_a_wanted_topic_is_subscribed_on_its_shard_once_and_its_waiter_is_the_acknowledgement():
    subs = Subscriptions()
    first = subs.want("a")
    assert subs.waiter("a") is first and subs.acknowledged("a") is None
    plan = subs.plan(SHARD, lambda shard: True)
    assert plan.subscribe == {"A": [("a", first)]} and plan.topics() == ["a"]
    assert subs.acknowledged("a") is False
    first.set()                                     # Redis acknowledged it
    assert subs.acknowledged("a") is True and subs.want("a") is first
    assert subs.plan(SHARD, lambda shard: True).subscribe == {}      # not written twice


def test_a_topic_whose_shard_is_not_heard_waits_and_its_first_subscriber_is_released():
    subs = Subscriptions()
    event = subs.want("b")
    plan = subs.plan(SHARD, lambda shard: shard != "B")
    assert plan.subscribe == {} and plan.unheard == {"B"} and event.is_set()
    subs.look_again()                               # a connection to B joined
    plan = subs.plan(SHARD, lambda shard: True)
    assert [topic for topic, _ in plan.subscribe["B"]] == ["b"]


def test_an_unwanted_topic_is_unsubscribed_where_it_was_and_dropped():
    subs = Subscriptions()
    subs.want("a")
    subs.plan(SHARD, lambda shard: True)
    subs.unwant("a")
    plan = subs.plan(SHARD, lambda shard: True)
    assert plan.unsubscribe == {"A": ["a"]} and plan.dropped == ["a"] and subs.written == 0


def test_a_lost_connection_gives_back_only_what_it_carried_and_those_are_subscribed_again():
    subs = Subscriptions()
    for topic in "abc":
        subs.want(topic)
    subs.plan(SHARD, lambda shard: True)
    subs.unwant("c")                                # not wanted any more: not subscribed again
    assert sorted(subs.connection_lost(["b", "c"])) == ["b", "c"]
    assert subs.acknowledged("a") is False and subs.acknowledged("b") is None
    plan = subs.plan(SHARD, lambda shard: True)
    assert [topic for topic, _ in plan.subscribe["B"]] == ["b"] and "A" not in plan.subscribe


def test_the_whole_link_lost_releases_every_waiter():
    subs = Subscriptions()
    event = subs.want("a")
    subs.link_lost()
    assert event.is_set() and subs.written == 0 and subs.wanted == {"a"}


class Conn:
    pending = 0


def test_a_lost_shard_is_missing_and_gives_up_the_control_channel_and_its_probe():
    shards = Shards()
    a, b = Conn(), Conn()
    assert not shards.join({"A": a, "B": b}, [])
    shards.add_probes({"A": b"pa", "B": b"pb"})
    assert shards.control_needed() == "A" and shards.control_needed() is None
    assert shards.probe_heard(b"pa") is False and shards.probe_heard(b"pb") is True
    assert shards.probe_heard(b"other") is None
    assert shards.lose("A") is a and shards.lose("A") is None
    assert shards.missing == {"A"} and shards.heard_probes() == {"B": b"pb"}
    assert 0 < shards.rejoin_in() <= 0.1            # ask the slot map again soon
    assert shards.control_needed() == "B"           # the control channel moves
    assert shards.join({"A2": Conn()}, ["A"]) is False      # still missing: no new log line
    assert shards.join({}, []) is True and not shards.missing
    assert len(shards.clear()) == 2 and not shards and shards.control_on is None


def test_rejoins_back_off():
    shards = Shards()
    shards.join({}, ["A"])
    for _ in range(6):
        shards.rejoin_failed()
    assert shards.rejoin_in(time.monotonic()) > 0.4
