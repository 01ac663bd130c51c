"""The Redis link's pure parts (issue 21): REDIS_URL per topology, redaction, and what
/ready says about a link (broker/readiness.py). No Redis needed."""
from __future__ import annotations

import pytest

from fonana_realtime.broker import readiness
from fonana_realtime.broker.link import open_link, redacted
from fonana_realtime.broker.link_cluster import ClusterLink, parse_cluster_url
from fonana_realtime.broker.link_sentinel import SentinelLink, parse_sentinel_url
from fonana_realtime.broker.link_single import SingleLink


def test_sentinel_urls():
    assert parse_sentinel_url("redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster") == dict(
        sentinels=[("10.0.0.1", 26379), ("10.0.0.2", 26380)], service="mymaster", db=0,
        username=None, password=None)
    assert parse_sentinel_url("redis+sentinel://:pw@h:1/m/3") == dict(
        sentinels=[("h", 1)], service="m", db=3, username=None, password="pw")
    assert parse_sentinel_url("redis+sentinel://u:p@w@h:1/m")["password"] == "p@w"
    assert parse_sentinel_url("redis+sentinel://[::1]:26379/m")["sentinels"] == [("::1", 26379)]


@pytest.mark.parametrize("url", ["redis+sentinel://h:1", "redis+sentinel://h:1/", "redis+sentinel://h/m",
                                 "redis+sentinel://h:1/m/x", "redis+sentinel://h:1,/m"])
def test_malformed_sentinel_urls_are_refused_clearly(url):
    with pytest.raises(ValueError, match="redis\\+sentinel"):
        parse_sentinel_url(url)


def test_cluster_urls():
    assert parse_cluster_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7001") == dict(
        nodes=[("10.0.0.1", 7000), ("10.0.0.2", 7001)], username=None, password=None)
    assert parse_cluster_url("redis+cluster://u:p@w@h:1/0") == dict(nodes=[("h", 1)], username="u", password="p@w")
    assert redacted("redis+cluster://:s3cret@h:1,h:2") == "redis+cluster://:***@h:1,h:2"


@pytest.mark.parametrize("url", ["redis+cluster://h", "redis+cluster://h:1,", "redis+cluster://h:1/2"])
def test_malformed_cluster_urls_are_refused_clearly(url):
    with pytest.raises(ValueError, match="redis\\+cluster"):
        parse_cluster_url(url)


def test_cluster_channels_share_their_streams_slot():
    from redis.crc import key_slot

    from fonana_realtime.redis_history import meta_key
    link = open_link("redis+cluster://127.0.0.1:1")
    for stream in ("post_p1", "user_u1", "notifications_u1"):
        channel = link.channel(b"fonana:rt:", stream)
        assert key_slot(channel) == key_slot(meta_key("fonana:rt:", stream).encode())
        assert link.topic_of(b"fonana:rt:", channel) == ("user:u1" if stream == "user_u1" else "channel:" + stream)


def test_the_scheme_picks_the_topology():
    assert isinstance(open_link("redis://127.0.0.1:1/0"), SingleLink)
    assert isinstance(open_link("rediss://127.0.0.1:1/0"), SingleLink)
    assert isinstance(open_link("redis+sentinel://127.0.0.1:1/m"), SentinelLink)
    assert isinstance(open_link("redis+cluster://127.0.0.1:1"), ClusterLink)    # connects at first use
    with pytest.raises(ValueError, match="unknown scheme 'http'"):
        open_link("http://127.0.0.1:1")


def test_sentinel_urls_are_logged_without_their_password():
    assert redacted("redis+sentinel://:s3cret@h:1,h:2/m") == "redis+sentinel://:***@h:1,h:2/m"
    assert redacted("redis+sentinel://u:s3cret@h:1/m/2") == "redis+sentinel://u:***@h:1/m/2"
    assert redacted("redis+sentinel://h:1/m") == "redis+sentinel://h:1/m"
    assert "s3cret" not in open_link("redis+sentinel://:s3cret@h:1/m").where


def state(**kw):
    base = dict(started=True, down=False, subscribed=True, live=True, stalled=False)
    return readiness.link_state(**{**base, **kw})


def test_link_states():
    assert state() == readiness.OK
    assert state(started=False) == state(down=True) == state(subscribed=False) == readiness.UNAVAILABLE
    assert state(live=False) == readiness.CATCHING_UP
    assert state(stalled=True, down=True, live=False) == readiness.STALLED     # says why it rebuilds


def test_probe_verdicts():
    assert readiness.probe_verdict(True, True) is True
    assert readiness.probe_verdict(True, False) is False       # published, never arrived: stalled
    assert readiness.probe_verdict(False, False) is None       # Redis unreachable: not a silent death


def test_sharded_subscribes_name_one_slot_each():
    """Redis answers CROSSSLOT to a SSUBSCRIBE naming channels of two slots."""
    from redis.crc import key_slot

    from fonana_realtime.broker.pubsub import CHANNELS_PER_COMMAND, PubSubConn
    link = open_link("redis+cluster://127.0.0.1:1")
    channels = [link.channel(b"p:", f"post_{i}") for i in range(50)] + \
        [link.channel(b"p:", "post_same")] * (CHANNELS_PER_COMMAND + 1)
    sharded = list(PubSubConn._chunks(channels, lambda c: c, sharded=True))
    assert all(len({key_slot(c) for c in chunk}) == 1 for chunk in sharded)
    assert all(len(chunk) <= CHANNELS_PER_COMMAND for chunk in sharded)
    assert sorted(c for chunk in sharded for c in chunk) == sorted(channels)
    classic = list(PubSubConn._chunks(channels[:50], lambda c: c, sharded=False))
    assert classic == [channels[:50]]                          # one command, slots ignored


def test_each_shard_gets_a_probe_channel_it_serves():
    from redis.crc import key_slot

    from fonana_realtime.broker.link_cluster import SLOTS
    link = open_link("redis+cluster://127.0.0.1:1")
    link._owners = ["a"] * 100 + ["b"] * (SLOTS - 200) + ["c"] * 100     # a slot map
    probes = link.probe_channels(b"p:worker:h:1:x", ["a", "b", "c"])
    assert set(probes) == {"a", "b", "c"}
    for shard, channel in probes.items():
        assert channel.startswith(b"p:worker:h:1:x{")
        assert link._owners[key_slot(channel)] == shard
