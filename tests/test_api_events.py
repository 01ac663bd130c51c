"""POST /api/events: routing of each catalogue type, explicit addresses, the list form,
validation (400 naming what is wrong, never a 500) and the bearer key.

PROTOCOL.md sections 3 and 4. Events arrive flat: the frame is the event object itself.
"""
import json
import re

import pytest

pytestmark = pytest.mark.postgres


@pytest.fixture
def ids(seed):
    creator = seed.user(is_creator=True)
    return {
        "creator": creator,
        "fan": seed.user(),
        "liker": seed.user(),
        "post": seed.post(creator),
        "bystander": seed.user(),
    }


ROW = {"id": "n-1", "userId": "?", "type": "LIKE_POST", "title": "New like", "message": "Someone liked it",
       "isRead": False, "metadata": {"postId": "p-1"}, "createdAt": "2025-07-01T12:00:00.000Z"}


def catalogue(i):
    """type -> (event, how the recipient listens, who must NOT get it without that subscription)."""
    C, F, L, P = i["creator"], i["fan"], i["liker"], i["post"]
    post_ch = ("channel", {"type": "post", "postId": P}, F)
    return {
        "notification": ({"type": "notification", "userId": F, "notification": dict(ROW, userId=F)}, ("user", F)),
        "notification_read": ({"type": "notification_read", "userId": F, "notificationId": "n-1"}, ("user", F)),
        "notifications_cleared": ({"type": "notifications_cleared", "userId": F}, ("user", F)),
        "post_liked": ({"type": "post_liked", "postId": P, "userId": L, "likesCount": 5}, post_ch),
        "post_unliked": ({"type": "post_unliked", "postId": P, "userId": L, "likesCount": 4}, post_ch),
        "post_created": ({"type": "post_created", "userId": C, "timestamp": "2025-07-01T12:00:00.000Z",
                          "post": {"id": P, "title": "Hello", "type": "text", "creatorId": C}},
                         ("channel", {"type": "feed", "userId": C}, C)),
        "post_deleted": ({"type": "post_deleted", "postId": P}, post_ch),
        "comment_added": ({"type": "comment_added", "postId": P,
                           "comment": {"id": "c-1", "userId": L, "content": "nice", "createdAt":
                                       "2025-07-01T12:00:00.000Z"}}, post_ch),
        "comment_deleted": ({"type": "comment_deleted", "postId": P, "commentId": "c-1"}, post_ch),
        "creator_updated": ({"type": "creator_updated", "creatorId": C, "data": {"nickname": "new"}},
                            ("channel", {"type": "creator", "id": C}, F)),
        "new_subscription": ({"type": "new_subscription", "creatorId": C, "userId": L},
                             ("channel", {"type": "creator", "id": C}, F)),
        "feed_update": ({"type": "feed_update", "userId": F, "posts": [{"id": P, "title": "Hello"}]}, ("user", F)),
        # the six the Fonana web app listens for (CreatorContext, useRealtimePosts): issue 19
        "subscription_cancelled": ({"type": "subscription_cancelled", "creatorId": C, "userId": L},
                                   ("channel", {"type": "creator", "id": C}, F)),
        "earnings_updated": ({"type": "earnings_updated", "creatorId": C, "earnings": {"total": 12.5}},
                             ("channel", {"type": "creator", "id": C}, F)),
        "flash_sale_created": ({"type": "flash_sale_created", "creatorId": C,
                                "flashSale": {"id": "fs-1", "discount": 20}},
                               ("channel", {"type": "creator", "id": C}, F)),
        "flash_sale_ended": ({"type": "flash_sale_ended", "creatorId": C, "flashSaleId": "fs-1"},
                             ("channel", {"type": "creator", "id": C}, F)),
        "post_purchased": ({"type": "post_purchased", "postId": P, "userId": F, "amount": 0.5}, ("user", F)),
        "subscription_updated": ({"type": "subscription_updated", "creatorId": C, "userId": F, "tier": "premium"},
                                 ("user", F)),
    }


ROUTED_TYPES = ["notification", "notification_read", "notifications_cleared", "post_liked", "post_unliked",
                "post_created", "post_deleted", "comment_added", "comment_deleted", "creator_updated",
                "new_subscription", "feed_update", "subscription_cancelled", "earnings_updated",
                "flash_sale_created", "flash_sale_ended", "post_purchased", "subscription_updated"]


@pytest.mark.parametrize("type_", ROUTED_TYPES)
def test_event_is_routed_by_its_type(server, ids, type_):
    event, route = catalogue(ids)[type_]
    bystander = server.connect(ids["bystander"])
    # every user named in the event, connected but holding no channel: must not get
    # channel-routed events (e.g. the liker of post_liked, the subscriber of new_subscription)
    named = {v for k, v in event.items() if k in ("userId", "creatorId")}
    if route[0] == "user":
        target = server.connect(route[1])
        unsubscribed = [server.connect(u) for u in named - {route[1]}]
    else:
        _, channel, holder = route
        target = server.connect(holder)
        target.subscribe(channel)
        unsubscribed = [server.connect(u) for u in named | {holder}]
    r = server.api("/api/events", {"event": event})
    assert r.status_code == 202, (r.status_code, r.text[:300])
    target.expect_event(event)
    target.barrier()
    for ws in unsubscribed + [bystander]:
        ws.barrier()


def test_user_routed_event_reaches_every_connection_of_the_user(server, ids):
    event, _ = catalogue(ids)["notifications_cleared"]
    tabs = [server.connect(ids["fan"]) for _ in range(3)]
    server.publish({"event": event})
    for ws in tabs:
        ws.expect_event(event)
        ws.barrier()


def test_new_post_from_subscription_without_address_is_400(server, ids):
    fan = server.connect(ids["fan"])
    event = {"type": "new_post_from_subscription",
             "post": {"id": ids["post"], "title": "t", "type": "text", "creatorId": ids["creator"],
                      "createdAt": "2025-07-01T12:00:00.000Z"}}
    r = server.api("/api/events", {"event": event})
    assert_400(r)
    fan.barrier()


def test_new_post_from_subscription_with_userId_is_delivered(server, ids):
    fan, bystander = server.connect(ids["fan"]), server.connect(ids["bystander"])
    event = {"type": "new_post_from_subscription",
             "post": {"id": ids["post"], "title": "t", "type": "text", "creatorId": ids["creator"],
                      "createdAt": "2025-07-01T12:00:00.000Z"}}
    r = server.api("/api/events", {"event": event, "userId": ids["fan"]})
    assert r.status_code == 202, (r.status_code, r.text[:300])
    fan.expect_event(event)
    bystander.barrier()


# -- explicit addresses ----------------------------------------------------------------------

def test_explicit_channel_object_overrides_routing(server, ids):
    holder = server.connect(ids["fan"])
    holder.subscribe({"type": "creator", "id": ids["creator"]})
    feed_owner = server.connect(ids["fan"])
    event = {"type": "feed_update", "userId": ids["bystander"], "posts": []}
    r = server.api("/api/events", {"event": event, "channel": {"type": "creator", "id": ids["creator"]}})
    assert r.status_code == 202, (r.status_code, r.text[:300])
    holder.expect_event(event)
    holder.barrier()
    feed_owner.barrier()


@pytest.mark.parametrize("kind", ["post", "creator", "feed", "notifications"])
def test_channel_key_string(server, ids, kind):
    channel, key = {
        "post": ({"type": "post", "postId": ids["post"]}, f"post_{ids['post']}"),
        "creator": ({"type": "creator", "id": ids["creator"]}, f"creator_{ids['creator']}"),
        "feed": ({"type": "feed", "userId": ids["fan"]}, f"feed_{ids['fan']}"),
        "notifications": ({"type": "notifications", "userId": ids["fan"]}, f"notifications_{ids['fan']}"),
    }[kind]
    holder = server.connect(ids["fan"])
    holder.subscribe(channel, key=key)
    other_tab = server.connect(ids["fan"])
    event = {"type": "creator_updated", "creatorId": "someone-else", "data": {"k": kind}}
    r = server.api("/api/events", {"event": event, "channel": key})
    assert r.status_code == 202, (r.status_code, r.text[:300])
    holder.expect_event(event)
    holder.barrier()
    other_tab.barrier()


def test_explicit_userId(server, ids):
    fan, bystander = server.connect(ids["fan"]), server.connect(ids["bystander"])
    event = {"type": "post_liked", "postId": ids["post"], "userId": ids["liker"], "likesCount": 1}
    holder = server.connect(ids["creator"])
    holder.subscribe({"type": "post", "postId": ids["post"]})
    r = server.api("/api/events", {"event": event, "userId": ids["fan"]})
    assert r.status_code == 202, (r.status_code, r.text[:300])
    fan.expect_event(event)
    # an explicit address replaces the type's route
    holder.barrier()
    bystander.barrier()


def test_event_to_user_without_connections_is_accepted(server, ids):
    r = server.api("/api/events", {"event": {"type": "feed_update", "userId": ids["bystander"], "posts": []}})
    assert r.status_code == 202, (r.status_code, r.text[:300])


def test_event_fields_beyond_the_catalogue_are_delivered_untouched(server, ids):
    fan = server.connect(ids["fan"])
    event = {"type": "feed_update", "userId": ids["fan"], "posts": [], "extra": {"nested": [1, 2, {"a": None}]},
             "unicode": "\u00e9\u4e2d\U0001f600"}
    server.publish({"event": event})
    fan.expect_event(event)


# -- list form ----------------------------------------------------------------------------

def test_list_form_publishes_in_order(server, ids):
    holder = server.connect(ids["fan"])
    holder.subscribe({"type": "post", "postId": ids["post"]})
    events = [{"type": "post_liked", "postId": ids["post"], "userId": ids["liker"], "likesCount": n}
              for n in range(6)]
    events.insert(3, {"type": "feed_update", "userId": ids["fan"], "posts": []})
    r = server.api("/api/events", {"events": events})
    assert r.status_code == 202, (r.status_code, r.text[:300])
    for event in events:
        holder.expect_event(event)
    holder.barrier()


def test_list_form_with_top_level_address_applies_to_all(server, ids):
    fan, bystander = server.connect(ids["fan"]), server.connect(ids["bystander"])
    events = [
        {"type": "new_post_from_subscription", "post": {"id": "p-a", "title": "a", "type": "text",
                                                         "creatorId": ids["creator"], "createdAt": "2025-07-01T12:00:00.000Z"}},
        {"type": "post_liked", "postId": ids["post"], "userId": ids["liker"], "likesCount": 2},
    ]
    r = server.api("/api/events", {"events": events, "userId": ids["fan"]})
    assert r.status_code == 202, (r.status_code, r.text[:300])
    for event in events:
        fan.expect_event(event)
    fan.barrier()
    bystander.barrier()


@pytest.mark.parametrize("bad_index", [0, 2])
def test_list_with_an_invalid_item_is_400_naming_it_and_publishes_nothing(server, ids, bad_index):
    holder = server.connect(ids["fan"])
    holder.subscribe({"type": "post", "postId": ids["post"]})
    events = [{"type": "post_liked", "postId": ids["post"], "userId": ids["liker"], "likesCount": n}
              for n in range(4)]
    events[bad_index] = {"postId": ids["post"], "likesCount": 0}  # no type
    r = server.api("/api/events", {"events": events})
    body = assert_400(r)
    text = json.dumps(body)
    assert body.get("index") == bad_index or re.search(rf"(?<![\d.]){bad_index}(?![\d.])", text), \
        f"the 400 does not name index {bad_index}: {text}"
    holder.barrier()


def test_list_with_an_unroutable_item_is_400(server, ids):
    holder = server.connect(ids["fan"])
    holder.subscribe({"type": "post", "postId": ids["post"]})
    events = [{"type": "post_liked", "postId": ids["post"], "userId": ids["liker"], "likesCount": 1},
              {"type": "new_post_from_subscription", "post": {"id": "x", "title": "x", "type": "text",
                                                              "creatorId": ids["creator"], "createdAt": "2025-07-01T12:00:00.000Z"}}]
    r = server.api("/api/events", {"events": events})
    body = assert_400(r)
    assert body.get("index") == 1 or re.search(r"(?<![\d.])1(?![\d.])", json.dumps(body)), body
    holder.barrier()


# -- validation -------------------------------------------------------------------------------

def assert_400(r):
    assert r.status_code == 400, f"expected 400, got {r.status_code}: {r.text[:500]}"
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and body, body
    assert any(isinstance(v, str) and v for v in body.values()), f"no reason in {body}"
    assert "Traceback" not in r.text
    return body


# The validation matrix (malformed bodies, bad requests, the bearer key, methods) runs
# in-process: tests/test_api_inprocess.py. Here: what needs the real server.


def test_body_over_the_limit_is_413(server):
    import requests
    big = json.dumps({"event": {"type": "feed_update", "userId": "u", "posts": ["x" * (1536 * 1024)]}})
    try:
        r = server.api("/api/events", raw=big)
    except requests.ConnectionError as exc:  # pragma: no cover - failure path
        raise AssertionError(f"the server dropped the connection instead of answering 413: {exc}") from exc
    assert r.status_code == 413, (r.status_code, r.text[:300])
