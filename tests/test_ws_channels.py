"""subscribe / unsubscribe for every channel type, refusals, id validation, unread_notifications.

PROTOCOL.md 2.2 and 2.3.
"""
import datetime as dt
import re

import pytest

from support.db import ROW_KEYS, utcnow

pytestmark = pytest.mark.postgres

FAILED = "Failed to subscribe"
DENIED = "Access denied to channel"
ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture(scope="module")
def world(seed):
    me = seed.user()
    other = seed.user(is_creator=True)
    return {
        "me": me,
        "other": other,
        "open_post": seed.post(other),
        "locked_post": seed.post(other, locked=True, tier="premium"),
    }


def channels_of(world):
    me, other = world["me"], world["other"]
    return {
        "notifications": ({"type": "notifications", "userId": me}, f"notifications_{me}"),
        "feed": ({"type": "feed", "userId": me}, f"feed_{me}"),
        "creator_other": ({"type": "creator", "id": other}, f"creator_{other}"),
        "creator_self": ({"type": "creator", "id": me}, f"creator_{me}"),
        "post_open": ({"type": "post", "postId": world["open_post"]}, f"post_{world['open_post']}"),
    }


@pytest.mark.parametrize("name", ["notifications", "feed", "creator_other", "creator_self", "post_open"])
def test_subscribe_each_channel_type(server, world, name):
    channel, key = channels_of(world)[name]
    ws = server.connect(world["me"])
    ws.send_json({"type": "subscribe", "channel": channel})
    frame = ws.recv_json()
    assert frame == {"type": "subscribed", "data": {"channel": channel, "channelKey": key}}, frame
    if name == "notifications":
        ws.expect_type("unread_notifications")
    ws.barrier()


@pytest.mark.parametrize("name", ["notifications", "feed", "creator_other", "post_open"])
def test_unsubscribe_is_idempotent(server, world, name):
    channel, key = channels_of(world)[name]
    ws = server.connect(world["me"])
    ws.subscribe(channel, key=key)
    for _ in range(2):
        ws.send_json({"type": "unsubscribe", "channel": channel})
        frame = ws.recv_json()
        assert frame == {"type": "unsubscribed", "data": {"channel": channel, "channelKey": key}}, frame
    ws.barrier()


def test_subscribed_and_unsubscribed_echo_the_channel_object_as_sent(server, world):
    channel = {"postId": world["open_post"], "type": "post", "label": "client-side name"}
    key = f"post_{world['open_post']}"
    ws = server.connect(world["me"])
    ws.send_json({"type": "subscribe", "channel": channel})
    assert ws.recv_json() == {"type": "subscribed", "data": {"channel": channel, "channelKey": key}}
    ws.send_json({"type": "unsubscribe", "channel": channel})
    assert ws.recv_json() == {"type": "unsubscribed", "data": {"channel": channel, "channelKey": key}}


def test_unsubscribe_from_a_channel_never_subscribed(server, world):
    channel, key = channels_of(world)["creator_other"]
    ws = server.connect(world["me"])
    ws.unsubscribe(channel, key=key)
    ws.barrier()


def test_unsubscribe_with_an_invalid_channel_is_invalid_channel(server, world):
    ws = server.connect(world["me"])
    ws.send_json({"type": "unsubscribe", "channel": {"type": "post", "postId": "bad id!"}})
    ws.expect_error("invalid_channel")
    ws.barrier()


def test_subscribe_again_after_unsubscribe(server, world):
    channel, key = channels_of(world)["post_open"]
    ws = server.connect(world["me"])
    ws.subscribe(channel, key=key)
    ws.unsubscribe(channel, key=key)
    ws.subscribe(channel, key=key)
    ws.barrier()


def test_subscribe_to_many_channels_on_one_connection(server, world):
    ws = server.connect(world["me"])
    for channel, key in channels_of(world).values():
        ws.subscribe(channel, key=key)
    ws.barrier()


# -- access_denied ------------------------------------------------------------------------------

@pytest.mark.parametrize("ctype", ["notifications", "feed"])
def test_personal_channel_of_another_user_is_denied(server, world, ctype):
    channel = {"type": ctype, "userId": world["other"]}
    ws = server.connect(world["me"])
    ws.send_json({"type": "subscribe", "channel": channel})
    frame = ws.expect_error("access_denied", DENIED)
    if "channel" in frame["data"]:
        assert frame["data"]["channel"] == channel, frame
    ws.barrier()


@pytest.mark.parametrize("ctype", ["notifications", "feed"])
def test_personal_channel_of_a_user_that_does_not_exist_is_denied(server, world, ctype):
    ws = server.connect(world["me"])
    ws.send_json({"type": "subscribe", "channel": {"type": ctype, "userId": "nobody-at-all"}})
    ws.expect_error("access_denied", DENIED)
    ws.barrier()


def test_missing_post_is_denied_not_invalid(server, world):
    ws = server.connect(world["me"])
    ws.send_json({"type": "subscribe", "channel": {"type": "post", "postId": "p" * 128}})
    ws.expect_error("access_denied", DENIED)
    ws.barrier()


def test_denied_subscription_does_not_deliver_events(server, world):
    ws = server.connect(world["me"])
    ws.subscribe_denied({"type": "post", "postId": world["locked_post"]})
    server.publish({"event": {"type": "post_liked", "postId": world["locked_post"], "userId": world["other"],
                              "likesCount": 1}})
    ws.barrier()


# -- invalid_channel -------------------------------------------------------------------------

ID_FIELD = {"notifications": "userId", "feed": "userId", "creator": "id", "post": "postId"}
BAD_IDS = {
    "empty": "",
    "129_chars": "a" * 129,
    "space": "a b",
    "slash": "a/b",
    "dot": "a.b",
    "colon": "post:1",
    "non_ascii": "caf\u00e9",
    "newline": "ab\n",
    "percent": "a%20b",
    "int": 123,
    "float": 1.5,
    "null": None,
    "bool": True,
    "list": ["abc"],
    "object": {"id": "abc"},
}


@pytest.mark.parametrize("ctype", sorted(ID_FIELD))
@pytest.mark.parametrize("bad", sorted(BAD_IDS))
def test_bad_id_is_invalid_channel(server, world, ctype, bad):
    value = BAD_IDS[bad]
    if ctype in ("notifications", "feed") and bad == "129_chars":
        value = world["me"] + "x" * (129 - len(world["me"]))
    channel = {"type": ctype, ID_FIELD[ctype]: value}
    ws = server.connect(world["me"])
    ws.send_json({"type": "subscribe", "channel": channel})
    ws.expect_error("invalid_channel", FAILED)
    ws.barrier()


@pytest.mark.parametrize("ctype", sorted(ID_FIELD))
def test_missing_id_field_is_invalid_channel(server, world, ctype):
    ws = server.connect(world["me"])
    ws.send_json({"type": "subscribe", "channel": {"type": ctype}})
    ws.expect_error("invalid_channel", FAILED)
    ws.barrier()


@pytest.mark.parametrize("channel", [
    {"type": "chat", "id": "abc"},
    {"type": "", "id": "abc"},
    {"type": "Post", "postId": "abc"},
    {"type": 5, "id": "abc"},
    {"id": "abc"},
    {},
], ids=["chat", "empty_type", "wrong_case", "numeric_type", "no_type", "empty_object"])
def test_unknown_channel_type_is_invalid_channel(server, world, channel):
    ws = server.connect(world["me"])
    ws.send_json({"type": "subscribe", "channel": channel})
    ws.expect_error("invalid_channel", FAILED)
    ws.barrier()


def test_id_field_of_another_channel_type_is_invalid_channel(server, world):
    # `post` needs `postId`; an `id` field does not stand in for it
    ws = server.connect(world["me"])
    ws.send_json({"type": "subscribe", "channel": {"type": "post", "id": world["open_post"]}})
    ws.expect_error("invalid_channel", FAILED)
    ws.barrier()


@pytest.mark.parametrize("channel", ["post_abc", ["post", "abc"], 7, None, "ABSENT"],
                         ids=["key_string", "list", "number", "null", "absent"])
def test_channel_that_is_not_an_object(server, world, channel):
    ws = server.connect(world["me"])
    frame = {"type": "subscribe"} if channel == "ABSENT" else {"type": "subscribe", "channel": channel}
    ws.send_json(frame)
    err = ws.expect_type("error")
    code = err["data"].get("code")
    expected = {"invalid_channel": FAILED, "invalid_message": "Invalid message format"}
    assert code in expected, err
    assert err["data"].get("message") == expected[code], err
    ws.barrier()


def test_boundary_128_char_id_is_valid(server, world):
    cid = "C" * 64 + "c-_9" * 16
    assert len(cid) == 128
    ws = server.connect(world["me"])
    ws.subscribe({"type": "creator", "id": cid}, key=f"creator_{cid}")
    ws.barrier()


def test_every_allowed_character_is_valid(server, world):
    cid = "ABCXYZabcxyz0189-_"
    ws = server.connect(world["me"])
    ws.subscribe({"type": "creator", "id": cid}, key=f"creator_{cid}")


# -- unread_notifications -------------------------------------------------------------------

@pytest.fixture(scope="module")
def inbox(seed):
    """A user with 25 unread and 5 read notifications, distinct times, plus someone else's."""
    uid = seed.user()
    base = dt.datetime(2025, 7, 1, 12, 0, 0, 123000)
    unread = []
    for i in range(25):
        created = base + dt.timedelta(minutes=i, milliseconds=i)
        nid = seed.notification(uid, title=f"unread {i}", message=f"message {i}", created_at=created,
                                type="LIKE_POST" if i % 2 else "NEW_SUBSCRIBER",
                                metadata={"i": i, "postId": f"post-{i}"} if i % 3 else None)
        unread.append((nid, created, i))
    for i in range(5):
        # read ones are the newest of all: they must still be left out
        seed.notification(uid, title=f"read {i}", read=True, created_at=base + dt.timedelta(days=1, minutes=i))
    seed.notification(seed.user(), title="not mine", created_at=base + dt.timedelta(days=2))
    return uid, unread


def test_unread_notifications_right_after_subscribed(server, inbox):
    uid, unread = inbox
    ws = server.connect(uid)
    ws.send_json({"type": "subscribe", "channel": {"type": "notifications", "userId": uid}})
    ws.expect_type("subscribed")
    frame = ws.expect_type("unread_notifications")
    data = frame["data"]
    assert data["count"] == 20, data.get("count")
    assert data["total"] == 25, data.get("total")
    rows = data["notifications"]
    assert len(rows) == 20
    newest_first = sorted(unread, key=lambda t: t[1], reverse=True)[:20]
    assert [r["id"] for r in rows] == [nid for nid, _, _ in newest_first]
    ws.barrier()


def test_unread_notification_row_shape(server, inbox):
    uid, unread = inbox
    ws = server.connect(uid)
    ws.subscribe({"type": "notifications", "userId": uid})
    rows = ws.unread["data"]["notifications"]
    by_id = {nid: (created, i) for nid, created, i in unread}
    for row in rows:
        assert set(row) == ROW_KEYS, row
        created, i = by_id[row["id"]]
        assert row["userId"] == uid
        assert row["type"] == ("LIKE_POST" if i % 2 else "NEW_SUBSCRIBER")
        assert row["title"] == f"unread {i}"
        assert row["message"] == f"message {i}"
        assert row["isRead"] is False
        assert row["metadata"] == ({"i": i, "postId": f"post-{i}"} if i % 3 else None)
        assert ISO_MS_Z.match(row["createdAt"]), row["createdAt"]
        assert row["createdAt"] == created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created.microsecond // 1000:03d}Z"


def test_unread_notifications_with_no_unread_rows(server, seed):
    uid = seed.user()
    seed.notification(uid, read=True)
    ws = server.connect(uid)
    ws.subscribe({"type": "notifications", "userId": uid})
    assert ws.unread["data"]["notifications"] == []
    assert ws.unread["data"]["count"] == 0
    assert ws.unread["data"]["total"] == 0


def test_unread_notifications_fewer_than_twenty(server, seed):
    uid = seed.user()
    now = utcnow()
    ids = [seed.notification(uid, created_at=now - dt.timedelta(minutes=m)) for m in (3, 1, 2)]
    ws = server.connect(uid)
    ws.subscribe({"type": "notifications", "userId": uid})
    data = ws.unread["data"]
    assert (data["count"], data["total"]) == (3, 3), data
    assert [r["id"] for r in data["notifications"]] == [ids[1], ids[2], ids[0]]


def test_other_subscriptions_send_no_unread_notifications(server, seed, inbox):
    uid, _ = inbox
    ws = server.connect(uid)
    ws.subscribe({"type": "feed", "userId": uid})
    ws.subscribe({"type": "creator", "id": uid})
    ws.barrier()


def test_denied_notifications_subscription_sends_no_unread(server, seed, inbox):
    uid, _ = inbox
    ws = server.connect(seed.user())
    ws.subscribe_denied({"type": "notifications", "userId": uid})
    ws.barrier()
