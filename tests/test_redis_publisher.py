"""`fonana_realtime.publisher` from a plain Python process (this one: no gevent, no
monkey-patching): RedisPublisher and HttpPublisher reach WebSocket clients on every
worker, validate before sending, and report a Redis outage as PublishError."""
from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest

if str(Path(__file__).resolve().parents[1]) not in sys.path:      # the repo, for the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fonana_realtime.publisher import HttpPublisher, InvalidEvent, PublishError, RedisPublisher
from support.redis_server import SHARED_URL, SPREAD_WORKER_CONNECTIONS, RedisServer, shared_redis
from support.redis_server import spread
from support.server import Server

pytestmark = pytest.mark.postgres

WORKERS = 2


@pytest.fixture(scope="module")
def prefix():
    return f"fonana:rt:pub-{secrets.token_hex(4)}:"


@pytest.fixture(scope="module")
def host(tmp_path_factory, pg_url, prefix):
    shared_redis().close()
    srv = Server(tmp_path_factory.mktemp("publisher-host"), name="publisher-host", database_url=pg_url,
                 env={"REDIS_URL": SHARED_URL, "REDIS_PREFIX": prefix, "WS_WORKERS": WORKERS,
                      "WS_WORKER_CONNECTIONS": SPREAD_WORKER_CONNECTIONS})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pub(prefix):
    p = RedisPublisher(SHARED_URL, prefix)
    yield p
    p.close()


@pytest.fixture
def scene(seed):
    creator = seed.user(is_creator=True)
    return {"creator": creator, "fan": seed.user(), "post": seed.post(creator)}


def test_helpers_reach_subscribers_on_every_worker(host, pub, scene):
    tabs = list(spread([host], scene["fan"], WORKERS).values())
    for ws in tabs:
        ws.subscribe({"type": "post", "postId": scene["post"]})
        ws.subscribe({"type": "creator", "id": scene["creator"]})
        ws.subscribe({"type": "feed", "userId": scene["fan"]})
    p, c, u = scene["post"], scene["creator"], scene["fan"]
    comment = {"id": "c1", "userId": u, "content": "hi", "createdAt": "2025-07-01T12:00:00.000Z"}
    calls = [
        (pub.post_liked(p, u, 5), {"type": "post_liked", "postId": p, "userId": u, "likesCount": 5}),
        (pub.post_unliked(p, u, 4), {"type": "post_unliked", "postId": p, "userId": u, "likesCount": 4}),
        (pub.comment_added(p, comment), {"type": "comment_added", "postId": p, "comment": comment}),
        (pub.comment_deleted(p, "c1"), {"type": "comment_deleted", "postId": p, "commentId": "c1"}),
        (pub.post_deleted(p), {"type": "post_deleted", "postId": p}),
        (pub.creator_updated(c, {"bio": "x"}), {"type": "creator_updated", "creatorId": c, "data": {"bio": "x"}}),
        (pub.new_subscription(c, u), {"type": "new_subscription", "creatorId": c, "userId": u}),
        (pub.post_created({"id": "p9"}, u, "2025-07-01T12:00:00.000Z"),
         {"type": "post_created", "post": {"id": "p9"}, "userId": u, "timestamp": "2025-07-01T12:00:00.000Z"}),
        (pub.feed_update(u, []), {"type": "feed_update", "userId": u, "posts": []}),
        (pub.notification(u, {"id": "n1"}), {"type": "notification", "userId": u, "notification": {"id": "n1"}}),
        (pub.notification_read(u, "n1"), {"type": "notification_read", "userId": u, "notificationId": "n1"}),
        (pub.notifications_cleared(u), {"type": "notifications_cleared", "userId": u}),
        (pub.new_post_from_subscription(u, {"id": "p9"}), {"type": "new_post_from_subscription", "post": {"id": "p9"}}),
        (pub.publish({"type": "custom", "k": 1}, channel={"type": "post", "postId": p}, user_id=u),
         {"type": "custom", "k": 1}),
        (pub.publish({"type": "custom", "k": 2}, channel=f"post_{p}"), {"type": "custom", "k": 2}),
    ]
    for receivers, _ in calls:
        assert receivers >= WORKERS          # both workers hold the topic(s)
    for ws in tabs:
        for _, event in calls:
            ws.expect_event(event)
        ws.barrier()


def test_redis_publisher_publishes_with_positions(pub, prefix):
    """Every publish goes through the publish script: offsets per stream, the history
    holds exactly what was published (PROTOCOL.md 7)."""
    import json

    from fonana_realtime.redis_history import RedisHistory

    post, user = "pos" + secrets.token_hex(4), "u" + secrets.token_hex(4)
    first = pub.post_deleted(post)
    epoch = first.positions[f"post_{post}"][0]
    assert first == 0 and first.positions == {f"post_{post}": (epoch, 1)}      # nobody listens: still kept
    second = pub.comment_deleted(post, "c1")
    assert second.offsets == {f"post_{post}": 2} and second.id != first.id
    union = pub.publish({"type": "custom", "k": 3}, channel=f"post_{post}", user_id=user)
    user_epoch = union.positions[f"user_{user}"][0]
    assert union.positions == {f"post_{post}": (epoch, 3), f"user_{user}": (user_epoch, 1)}

    history = RedisHistory(pub.client, prefix)
    rec = history.since(f"post_{post}", epoch, 0, 300)
    assert rec.ok and rec.top == 3
    assert [json.loads(e)["event"] for e in rec.entries] == [
        {"type": "post_deleted", "postId": post},
        {"type": "comment_deleted", "postId": post, "commentId": "c1"},
        {"type": "custom", "k": 3}]
    assert [json.loads(e)["id"] for e in rec.entries] == [first.id, second.id, union.id]
    rec = history.since(f"user_{user}", user_epoch, 0, 300)
    assert rec.ok and [json.loads(e)["id"] for e in rec.entries] == [union.id]


def test_invalid_events_raise_before_anything_is_sent(host, pub, scene):
    ws = host.connect(scene["fan"])
    with pytest.raises(InvalidEvent):
        pub.post_liked("bad id!", scene["fan"], 1)
    with pytest.raises(InvalidEvent):
        pub.publish({"type": "post_liked", "postId": scene["post"]})          # fields missing
    with pytest.raises(InvalidEvent):
        pub.publish({"type": "custom"})                                      # no route, no address
    with pytest.raises(InvalidEvent):
        pub.publish({"type": "custom"}, user_id="no spaces allowed")
    with pytest.raises(InvalidEvent):
        pub.publish({"type": "custom"}, channel={"type": "nope", "id": "x"})
    with pytest.raises(InvalidEvent):
        pub.publish(["not", "an", "object"], user_id=scene["fan"])
    ws.barrier()


def test_http_publisher(host, scene, seed):
    api = HttpPublisher(host.base_url, host.api_key)
    tabs = list(spread([host], scene["fan"], WORKERS).values())
    event = {"type": "feed_update", "userId": scene["fan"], "posts": ["over http"]}
    # PROTOCOL.md 7: the answer adds each event's positions (one entry per event)
    answer = api.feed_update(scene["fan"], ["over http"])
    assert answer["published"] == 1 and len(answer["positions"]) == 1
    row = api.create_notification(scene["fan"], "SYSTEM_ANNOUNCEMENT", "Hello", "from python")
    assert row["userId"] == scene["fan"] and seed.notification_row(row["id"]) is not None
    for ws in tabs:
        ws.expect_event(event)
        ws.expect_event({"type": "notification", "userId": scene["fan"], "notification": row})
        ws.barrier()
    with pytest.raises(PublishError) as err:
        HttpPublisher(host.base_url, "wrong-key").feed_update(scene["fan"], [])
    assert err.value.status == 401


def test_redis_publisher_reports_an_outage(tmp_path):
    rs = RedisServer(tmp_path / "redis").start()
    p = RedisPublisher(rs.url, "x:")
    try:
        assert p.post_deleted("p1") == 0                    # nobody listens: accepted, 0 receivers
        rs.stop()
        with pytest.raises(PublishError):
            p.post_deleted("p1")
        rs.start()
        assert p.post_deleted("p1") == 0                    # a fresh connection, no restart needed
    finally:
        p.close()
        rs.stop()
