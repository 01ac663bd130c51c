"""Fan-out through Redis across workers and hosts (issue 3; PROTOCOL.md 4 and 5).

Two server instances ("hosts", two ports) with WS_WORKERS=2 each, sharing the machine's
Redis with a REDIS_PREFIX unique to this run and one PostgreSQL database. Clients are
spread over all four workers (the welcome frame names the worker pid). "Nothing more
arrives" is the ping/pong barrier; "a worker listens only where it has subscribers" is
read from Redis itself (PUBSUB NUMSUB / PUBSUB CHANNELS), never from timing.
"""
from __future__ import annotations

import json
import secrets
import time

import pytest

from support.redis_server import SHARED_URL, shared_redis
from support.redis_server import hosts as start_hosts
from support.redis_server import spread as spread_over

pytestmark = pytest.mark.postgres

WORKERS = 2


@pytest.fixture(scope="module")
def prefix():
    return f"fonana:rt:test-{secrets.token_hex(4)}:"


@pytest.fixture(scope="module")
def rds():
    r = shared_redis()
    yield r
    r.close()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, pg_url, prefix, rds):
    with start_hosts(tmp_path_factory, "redis-host", SHARED_URL, WORKERS, pg_url,
                     env={"REDIS_PREFIX": prefix}) as servers:
        yield servers


@pytest.fixture
def scene(seed):
    creator = seed.user(is_creator=True)
    return {"creator": creator, "fan": seed.user(), "other": seed.user(), "post": seed.post(creator)}


def spread(hosts, user_id):
    return spread_over(hosts, user_id, WORKERS)


def liked(scene, n):
    return {"type": "post_liked", "postId": scene["post"], "userId": scene["creator"], "likesCount": n}


def numsub(rds, channel: str) -> int:
    return dict(rds.pubsub_numsub(channel)).get(channel.encode(), 0)


def wait_numsub(rds, channel: str, expected: int, timeout: float = 10.0) -> None:
    """Unsubscribing is not acknowledged to the client: poll Redis's own count, with a deadline."""
    deadline = time.monotonic() + timeout
    while (n := numsub(rds, channel)) != expected:
        assert time.monotonic() < deadline, f"PUBSUB NUMSUB {channel} stayed {n}, expected {expected}"
        time.sleep(0.02)


def test_every_worker_of_both_hosts_gets_an_event_injected_on_either_host_once(hosts, scene, rds, prefix):
    clients = spread(hosts, scene["fan"])
    channel = {"type": "post", "postId": scene["post"]}
    for ws in clients.values():
        ws.subscribe(channel)
    # each of the four workers holds the channel exactly once (one subscriber link per worker)
    assert numsub(rds, f"{prefix}channel:post_{scene['post']}") == 4
    for n, srv in enumerate(hosts):
        srv.publish({"event": liked(scene, n)})
        for ws in clients.values():
            ws.expect_event(liked(scene, n))
    for ws in clients.values():
        ws.barrier()


def test_a_plain_redis_publish_reaches_every_worker(hosts, scene, rds, prefix):
    clients = spread(hosts, scene["fan"])
    for ws in clients.values():
        ws.subscribe({"type": "post", "postId": scene["post"]})
    event = liked(scene, 7)
    receivers = rds.publish(f"{prefix}channel:post_{scene['post']}", json.dumps({"event": event}))
    assert receivers == 4
    for ws in clients.values():
        ws.expect_event(event)
    by_user = {"type": "feed_update", "userId": scene["fan"], "posts": []}
    rds.publish(f"{prefix}user:{scene['fan']}", json.dumps({"event": by_user}))
    for ws in clients.values():
        ws.expect_event(by_user)
        ws.barrier()


def test_user_addressed_events_reach_every_tab_wherever_it_is(hosts, scene, seed):
    tabs = spread(hosts, scene["fan"])
    bystanders = spread(hosts, scene["other"])
    feed = {"type": "feed_update", "userId": scene["fan"], "posts": [{"id": "p1"}]}
    hosts[1].publish({"event": feed})
    for ws in tabs.values():
        ws.expect_event(feed)
    # the notification endpoint writes the row on one host; the push reaches all tabs
    r = hosts[0].api("/api/notifications", {"userId": scene["fan"], "type": "SYSTEM_ANNOUNCEMENT",
                                            "title": "Hi", "message": "across hosts"})
    assert r.status_code == 201, r.text
    row = r.json()
    for ws in tabs.values():
        ws.expect_event({"type": "notification", "userId": scene["fan"], "notification": row})
        ws.barrier()
    for ws in bystanders.values():
        ws.barrier()


def test_union_of_channel_and_user_reaches_a_connection_holding_both_once(hosts, scene, rds, prefix):
    channel = {"type": "post", "postId": scene["post"]}
    both = spread(hosts, scene["fan"])             # hold the user topic and the channel
    for ws in both.values():
        ws.subscribe(channel)
    only_channel = spread(hosts, scene["other"])
    for ws in only_channel.values():
        ws.subscribe(channel)
    only_user = hosts[0].connect(scene["fan"])     # a tab of the user without the channel
    event = {"type": "custom_union", "n": 1}
    for srv in hosts:
        srv.publish({"event": event, "channel": channel, "userId": scene["fan"]})
        for ws in [*both.values(), *only_channel.values(), only_user]:
            ws.expect_event(event)
    # the same union PUBLISHed by hand (the envelope other publishers may use)
    body = json.dumps({"event": event, "id": secrets.token_hex(8),
                       "topics": [f"channel:post_{scene['post']}", f"user:{scene['fan']}"]})
    pipe = rds.pipeline(transaction=True)
    pipe.publish(f"{prefix}channel:post_{scene['post']}", body)
    pipe.publish(f"{prefix}user:{scene['fan']}", body)
    pipe.execute()
    for ws in [*both.values(), *only_channel.values(), only_user]:
        ws.expect_event(event)
        ws.barrier()


def test_subscribed_means_delivered_for_the_first_subscriber_of_a_topic(hosts, seed, rds, prefix):
    """No sleep anywhere: the event is published the moment `subscribed` (or the welcome
    frame) arrives, and must not be missed."""
    for n in range(12):
        srv = hosts[n % 2]
        ws = srv.connect(seed.user())
        key = f"creator_fresh-{secrets.token_hex(6)}"
        ws.subscribe({"type": "creator", "id": key.split("_", 1)[1]})
        event = {"type": "creator_updated", "creatorId": key.split("_", 1)[1], "data": {"n": n}}
        assert rds.publish(f"{prefix}channel:{key}", json.dumps({"event": event})) >= 1
        ws.expect_event(event)
        ws.close()
    for n in range(12):
        user = seed.user()
        ws = hosts[n % 2].connect(user)                 # welcome: the user topic is held
        event = {"type": "feed_update", "userId": user, "posts": [n]}
        assert rds.publish(f"{prefix}user:{user}", json.dumps({"event": event})) == 1
        ws.expect_event(event)
        ws.close()


def test_a_worker_listens_only_to_topics_it_has_subscribers_for(hosts, scene, rds, prefix):
    key = f"creator_{scene['creator']}"
    channel_name = f"{prefix}channel:{key}"
    user_name = f"{prefix}user:{scene['other']}"
    assert numsub(rds, channel_name) == 0 and numsub(rds, user_name) == 0
    first = hosts[0].connect(scene["other"])
    first.subscribe({"type": "creator", "id": scene["creator"]})
    # acknowledged before `subscribed`: exact at once, and only the one worker holds it
    assert numsub(rds, channel_name) == 1
    assert numsub(rds, user_name) == 1
    assert channel_name.encode() in rds.pubsub_channels(f"{prefix}channel:*")

    second = hosts[1].connect(scene["other"])
    second.subscribe({"type": "creator", "id": scene["creator"]})
    assert numsub(rds, channel_name) == 2
    assert numsub(rds, user_name) == 2

    first.unsubscribe({"type": "creator", "id": scene["creator"]})
    wait_numsub(rds, channel_name, 1)
    assert numsub(rds, user_name) == 2                   # the user topic stays with the connection
    second.close()
    wait_numsub(rds, channel_name, 0)
    wait_numsub(rds, user_name, 1)
    first.close()
    wait_numsub(rds, user_name, 0)
    assert channel_name.encode() not in rds.pubsub_channels(f"{prefix}channel:*")
    assert user_name.encode() not in rds.pubsub_channels(f"{prefix}user:*")
    # with nobody connected, a worker holds nothing of ours: only its private readiness topic
    held = set(rds.pubsub_channels(f"{prefix}*"))
    assert channel_name.encode() not in held and user_name.encode() not in held


MALFORMED = [
    b"not json",
    b"\xff\xfe",
    b"[1,2,3]",
    b'"a string"',
    b"{}",
    b'{"event": "post_liked"}',
    b'{"event": {"no": "type"}}',
    b'{"event": {"type": 5}}',
    b'{"event": {"type": ""}}',
    b'{"event": {"type": "x"}, "id": 12}',
    b'{"event": {"type": "x"}, "id": "' + b"i" * 100 + b'"}',
    b'{"event": {"type": "x"}, "id": "t1", "topics": "user:someone"}',
    json.dumps({"event": {"type": "x2"}, "ts": "yesterday"}).encode(),
    b'{"event": {"type": "deep", "v": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}",
]


def test_malformed_messages_from_redis_are_dropped_and_no_worker_dies(hosts, scene, rds, prefix):
    clients = spread(hosts, scene["fan"])
    channel = f"{prefix}user:{scene['fan']}"
    for raw in MALFORMED:
        rds.publish(channel, raw)
    good = {"type": "feed_update", "userId": scene["fan"], "posts": ["after garbage"]}
    rds.publish(channel, json.dumps({"event": good}))
    for ws in clients.values():
        # tolerated: an id without a topic list (delivered to the topic it came on), a bad `ts`
        ws.expect_event({"type": "x"})
        ws.expect_event({"type": "x2"})
        ws.expect_event(good)
        ws.barrier()
    # the same four worker pids answer new connections: none died and was replaced
    assert set(spread(hosts, scene["other"])) == set(clients)
    out = "".join(srv.output() for srv in hosts)
    assert "broker_drop" in out
    assert "not json" not in out and "after garbage" not in out      # payloads are never logged
    assert "Traceback" not in out
