"""What the Fonana app's switch-over needs from the HTTP API (PROTOCOL.md 4.1, issue 19),
against a real server on PostgreSQL with real connections:

- `POST /api/notifications/push`: the row the app's route wrote is pushed, never written
  again (by `metadata.id`, or by its content within WS_PUSH_MATCH_SECONDS); a row is
  created only when the route wrote none;
- list items of `POST /api/events` with their own address (`notifyNewPost`);
- `POST /api/likes`: the seed's updatePostLikes, `likesCount` read from the database.
"""
import datetime as dt
import secrets

import pytest

from support.db import utcnow
from support.redis_server import shared_redis

pytestmark = pytest.mark.postgres


def iso(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def app_row(seed, user_id, **kw):
    """A row as the app's route writes it (prisma.notification.create), read back."""
    nid = seed.notification(user_id, **kw)
    return seed.notification_row(nid)


def as_row(db) -> dict:
    return {"id": db["id"], "userId": db["userId"], "type": db["type"], "title": db["title"],
            "message": db["message"], "isRead": db["isRead"], "metadata": db["metadata"],
            "createdAt": iso(db["createdAt"])}


def pushed(user_id, db) -> dict:
    return {"type": "notification", "userId": user_id, "notification": as_row(db)}


# -- POST /api/notifications/push -------------------------------------------------------------

def test_push_by_metadata_id_sends_the_apps_row_and_writes_nothing(server, seed):
    # app/api/tips/route.ts: prisma.notification.create, then sendNotification with
    # {...metadata, id, isRead, createdAt}
    creator = seed.user()
    db = app_row(seed, creator, type="TIP_RECEIVED", title="New Tip Received!", message="You received a 1 SOL tip!",
                 metadata={"senderId": "u-x", "amount": 1})
    tab = server.connect(creator)
    r = server.api("/api/notifications/push", {
        "userId": creator, "type": "TIP_RECEIVED", "title": "New Tip Received!", "message": "You received a 1 SOL tip!",
        "metadata": {"senderId": "u-x", "amount": 1, "id": db["id"], "isRead": False,
                     "createdAt": iso(db["createdAt"])}})
    assert r.status_code == 200, r.text
    assert r.json() == {"notification": as_row(db), "created": False}
    tab.expect_event(pushed(creator, db))
    assert [n["id"] for n in seed.notifications_of(creator)] == [db["id"]]


def test_push_by_content_sends_the_row_the_like_route_wrote(server, seed):
    # app/api/posts/[id]/like/route.ts: notifyPostLike (lib/notifications.ts) writes
    # "New like on your post" with {postId}; sendNotification says "Новый лайк" with {postId, userId}
    creator, liker = seed.user(), seed.user()
    db = app_row(seed, creator, type="LIKE_POST", title="New like on your post", message="X liked your post",
                 metadata={"postId": "p-1"})
    tab = server.connect(creator)
    r = server.api("/api/notifications/push", {"userId": creator, "type": "LIKE_POST", "title": "Новый лайк",
                                               "message": "X лайкнул ваш пост", "metadata": {"postId": "p-1",
                                                                                             "userId": liker}})
    assert r.status_code == 200, r.text
    assert r.json()["notification"]["id"] == db["id"]
    tab.expect_event(pushed(creator, db))
    assert len(seed.notifications_of(creator)) == 1


def test_two_alike_rows_and_two_pushes_each_row_is_pushed_once(server, seed):
    creator = seed.user()
    first = app_row(seed, creator, type="LIKE_POST", metadata={"postId": "p-2"},
                    created_at=utcnow() - dt.timedelta(seconds=1))
    second = app_row(seed, creator, type="LIKE_POST", metadata={"postId": "p-2"})
    tab = server.connect(creator)
    body = {"userId": creator, "type": "LIKE_POST", "title": "t", "message": "m", "metadata": {"postId": "p-2"}}
    ids = [server.api("/api/notifications/push", body).json()["notification"]["id"] for _ in range(2)]
    assert ids == [first["id"], second["id"]]          # oldest first: each route gets its own back
    tab.expect_event(pushed(creator, first))
    tab.expect_event(pushed(creator, second))
    assert len(seed.notifications_of(creator)) == 2


def test_push_does_not_take_a_row_whose_metadata_it_does_not_cover(server, seed):
    creator = seed.user()
    app_row(seed, creator, type="COMMENT_POST", metadata={"postId": "p-3", "commentId": "c-1"})
    tab = server.connect(creator)
    r = server.api("/api/notifications/push", {"userId": creator, "type": "COMMENT_POST", "title": "t",
                                               "message": "m", "metadata": {"postId": "p-3", "commentId": "c-2"}})
    assert r.status_code == 201, r.text     # c-2's route wrote nothing: this push writes it
    created = r.json()["notification"]
    assert created["metadata"] == {"postId": "p-3", "commentId": "c-2"}
    tab.expect_event({"type": "notification", "userId": creator, "notification": created})
    assert len(seed.notifications_of(creator)) == 2


def test_push_without_a_written_row_creates_it_once(server, seed):
    # app/api/posts/route-original.ts: sendNotification(NEW_POST_FROM_SUBSCRIPTION) with no row written
    fan = seed.user()
    tab = server.connect(fan)
    body = {"userId": fan, "type": "NEW_POST_FROM_SUBSCRIPTION", "title": "Новый пост", "message": "C posted",
            "metadata": {"postId": "p-4", "creatorId": "c-4"}}
    r = server.api("/api/notifications/push", body)
    assert r.status_code == 201, r.text
    row = r.json()["notification"]
    tab.expect_event({"type": "notification", "userId": fan, "notification": row})
    assert [n["id"] for n in seed.notifications_of(fan)] == [row["id"]]
    # a second call of the same content is another notification: the first row is taken
    again = server.api("/api/notifications/push", body)
    assert again.status_code == 201 and again.json()["notification"]["id"] != row["id"]
    assert len(seed.notifications_of(fan)) == 2


def test_a_row_older_than_the_window_is_not_taken(server, seed):
    creator = seed.user()
    old = app_row(seed, creator, type="NEW_SUBSCRIBER", metadata={"plan": "basic"},
                  created_at=utcnow() - dt.timedelta(hours=1))
    r = server.api("/api/notifications/push", {"userId": creator, "type": "NEW_SUBSCRIBER", "title": "t",
                                               "message": "m", "metadata": {"plan": "basic", "userId": "u"}})
    assert r.status_code == 201, r.text
    assert r.json()["notification"]["id"] != old["id"]


def test_push_naming_a_missing_row_is_404_and_pushes_nothing(server, seed):
    user, other = seed.user(), seed.user()
    theirs = app_row(seed, other, type="TIP_RECEIVED")
    tab = server.connect(user)
    for missing in ("n-does-not-exist", theirs["id"]):
        r = server.api("/api/notifications/push", {"userId": user, "type": "TIP_RECEIVED", "title": "t",
                                                   "message": "m", "metadata": {"id": missing}})
        assert r.status_code == 404, r.text
        assert r.json()["error"] == "not_found"
    tab.barrier()
    assert seed.notifications_of(user) == []


@pytest.mark.parametrize("body, reason", [
    ({"type": "NOT_A_TYPE", "title": "t", "message": "m"}, "NotificationType"),
    ({"type": "LIKE_POST", "title": "t", "message": "m", "metadata": [1]}, "metadata"),
    ({"type": "LIKE_POST", "message": "m"}, "title"),
])
def test_push_bad_bodies_are_400(server, seed, body, reason):
    user = seed.user()
    r = server.api("/api/notifications/push", {"userId": user, **body})
    assert r.status_code == 400, r.text
    assert reason in r.json()["reason"]
    assert seed.notifications_of(user) == []


def test_push_to_an_unknown_user_is_404(server):
    r = server.api("/api/notifications/push", {"userId": "u-nobody-" + secrets.token_hex(4), "type": "LIKE_POST",
                                               "title": "t", "message": "m"})
    assert r.status_code == 404 and r.json()["reason"] == "unknown_user", r.text


def test_claims_in_redis_are_taken_once_across_processes():
    """RedisClaims (what every worker and host shares with REDIS_URL) against the machine's Redis."""
    from fonana_realtime.push_claims import MemoryClaims, RedisClaims

    rds = shared_redis()
    prefix = f"fonana:rt:test-{secrets.token_hex(4)}:"
    try:
        a, b = RedisClaims(rds, prefix, 10), RedisClaims(rds, prefix, 10)
        assert a.claim("n-1") is True
        assert b.claim("n-1") is False
        assert b.claim("n-2") is True
        assert 0 < rds.ttl(f"{prefix}pushed:n-1") <= 70
        mem = MemoryClaims(10)
        assert (mem.claim("n-1"), mem.claim("n-1"), mem.claim("n-2")) == (True, False, True)
    finally:
        rds.delete(f"{prefix}pushed:n-1", f"{prefix}pushed:n-2")
        rds.close()


# -- POST /api/events: list items with their own address ----------------------------------------

def test_list_items_with_their_own_address_reach_each_subscriber(server, seed):
    # notifyNewPost(post, subscriberIds): one event to each subscriber, one request
    a, b, c = seed.user(), seed.user(), seed.user()
    tabs = {u: server.connect(u) for u in (a, b, c)}
    post = {"id": "p-5", "title": "Hello", "type": "text", "creatorId": "c-5", "createdAt": "2025-07-01T12:00:00.000Z"}
    event = {"type": "new_post_from_subscription", "post": post}
    r = server.api("/api/events", {"events": [{"event": event, "userId": a}, {"event": event, "userId": b}]})
    assert r.status_code == 202, r.text
    assert r.json()["published"] == 2
    tabs[a].expect_event(event)
    tabs[b].expect_event(event)
    for ws in tabs.values():
        ws.barrier()


def test_a_list_item_with_a_bad_address_is_400_naming_it_and_nothing_is_published(server, seed):
    a = seed.user()
    tab = server.connect(a)
    event = {"type": "new_post_from_subscription", "post": {"id": "p"}}
    for bad in ({"event": event, "userId": "bad id!"}, {"event": event, "userId": a, "extra": 1},
                {"event": event}):          # no address of its own, none at the top: no route
        r = server.api("/api/events", {"events": [{"event": event, "userId": a}, bad]})
        assert r.status_code == 400, r.text
        assert r.json()["index"] == 1
    tab.barrier()


# -- POST /api/likes ------------------------------------------------------------------------------

def test_likes_reads_the_count_from_the_database(server, seed):
    creator, liker = seed.user(), seed.user()
    post = seed.post(creator)
    seed.execute('UPDATE "posts" SET "likesCount" = 7 WHERE "id" = %s', (post,))
    watcher = server.connect(creator)
    watcher.subscribe({"type": "post", "postId": post})
    r = server.api("/api/likes", {"postId": post, "userId": liker, "isLiked": True})
    assert r.status_code == 202, r.text
    assert r.json()["likesCount"] == 7
    watcher.expect_event({"type": "post_liked", "postId": post, "userId": liker, "likesCount": 7})
    seed.execute('UPDATE "posts" SET "likesCount" = 6 WHERE "id" = %s', (post,))
    r = server.api("/api/likes", {"postId": post, "userId": liker, "isLiked": False})
    assert r.status_code == 202, r.text
    watcher.expect_event({"type": "post_unliked", "postId": post, "userId": liker, "likesCount": 6})


def test_likes_with_a_count_uses_it_and_an_unknown_post_is_404(server, seed):
    creator, liker = seed.user(), seed.user()
    post = seed.post(creator)
    watcher = server.connect(creator)
    watcher.subscribe({"type": "post", "postId": post})
    r = server.api("/api/likes", {"postId": post, "userId": liker, "likesCount": 3})
    assert r.status_code == 202, r.text
    watcher.expect_event({"type": "post_liked", "postId": post, "userId": liker, "likesCount": 3})
    # the app's updatePostLikes(postId, likesCount, userId?) may leave the liker out
    r = server.api("/api/likes", {"postId": post, "likesCount": 2})
    assert r.status_code == 202, r.text
    watcher.expect_event({"type": "post_liked", "postId": post, "userId": None, "likesCount": 2})
    r = server.api("/api/likes", {"postId": "p-missing-" + secrets.token_hex(3), "userId": liker})
    assert r.status_code == 404 and r.json()["reason"] == "unknown_post", r.text
    for bad in ({"isLiked": "yes"}, {"likesCount": -1}, {"likesCount": 1.5}, {"likesCount": True}):
        r = server.api("/api/likes", {"postId": post, "userId": liker, **bad})
        assert r.status_code == 400, (bad, r.text)
    watcher.barrier()


def test_concurrent_pushes_on_two_hosts_with_redis_take_each_row_once(server_factory, pg_url, seed):
    """Eight routes each wrote one alike row and push at once, half through each of two
    servers sharing one database and one Redis (their claims): each row is pushed exactly
    once, none is written again. (Claims kept in process would let both hosts take the
    oldest row.)"""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from support.redis_server import SHARED_URL

    env = {"REDIS_URL": SHARED_URL, "REDIS_PREFIX": f"fonana:rt:test-{secrets.token_hex(4)}:"}
    hosts = [server_factory.start(f"push-redis-{n}", database_url=pg_url, env=env) for n in "ab"]
    creator = seed.user()
    written = {app_row(seed, creator, type="LIKE_POST", metadata={"postId": "p-9"})["id"] for _ in range(8)}
    body = {"userId": creator, "type": "LIKE_POST", "title": "t", "message": "m", "metadata": {"postId": "p-9"}}

    def push(n):
        host = hosts[n % 2]
        r = requests.post(host.base_url + "/api/notifications/push", json=body, timeout=15,
                          headers={"Authorization": f"Bearer {host.api_key}", "Connection": "close"})
        assert r.status_code == 200, r.text
        return r.json()["notification"]["id"]

    with ThreadPoolExecutor(8) as pool:
        pushed = list(pool.map(push, range(8)))
    assert sorted(pushed) == sorted(written)
    assert {n["id"] for n in seed.notifications_of(creator)} == written
