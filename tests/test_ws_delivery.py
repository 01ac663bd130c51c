"""Delivery to connections: several tabs of one user, at most once per connection.

PROTOCOL.md 2.2 ("each event reaches each connection at most once, even when it is addressed
both to a user and to a channel that connection holds") and 2.3 ("one user may hold several
connections: each is separate").
"""
import pytest

pytestmark = pytest.mark.postgres


@pytest.fixture
def scene(seed):
    creator = seed.user(is_creator=True)
    fan = seed.user()
    return {"creator": creator, "fan": fan, "post": seed.post(creator)}


def liked(scene, n=1):
    return {"type": "post_liked", "postId": scene["post"], "userId": scene["creator"], "likesCount": n}


def feed_update(user, n=0):
    return {"type": "feed_update", "userId": user, "posts": [{"id": f"p{n}", "title": "t"}]}


def test_both_tabs_get_user_addressed_events(server, scene):
    a, b = server.connect(scene["fan"]), server.connect(scene["fan"])
    event = feed_update(scene["fan"])
    server.publish({"event": event})
    a.expect_event(event)
    b.expect_event(event)
    a.barrier()
    b.barrier()


def test_both_tabs_get_events_of_a_channel_both_hold(server, scene):
    a, b = server.connect(scene["fan"]), server.connect(scene["fan"])
    channel = {"type": "post", "postId": scene["post"]}
    a.subscribe(channel)
    b.subscribe(channel)
    server.publish({"event": liked(scene)})
    a.expect_event(liked(scene))
    b.expect_event(liked(scene))


def test_subscriptions_are_per_connection_not_per_user(server, scene):
    a, b = server.connect(scene["fan"]), server.connect(scene["fan"])
    a.subscribe({"type": "post", "postId": scene["post"]})
    server.publish({"event": liked(scene)})
    a.expect_event(liked(scene))
    b.barrier()


def test_unsubscribing_in_one_tab_leaves_the_other_subscribed(server, scene):
    a, b = server.connect(scene["fan"]), server.connect(scene["fan"])
    channel = {"type": "post", "postId": scene["post"]}
    a.subscribe(channel)
    b.subscribe(channel)
    a.unsubscribe(channel)
    server.publish({"event": liked(scene, 2)})
    b.expect_event(liked(scene, 2))
    a.barrier()
    # user-addressed events still reach the tab that unsubscribed
    server.publish({"event": feed_update(scene["fan"], 3)})
    a.expect_event(feed_update(scene["fan"], 3))
    b.expect_event(feed_update(scene["fan"], 3))


def test_closing_one_tab_leaves_the_other_working(server, scene):
    a, b = server.connect(scene["fan"]), server.connect(scene["fan"])
    channel = {"type": "post", "postId": scene["post"]}
    a.subscribe(channel)
    b.subscribe(channel)
    a.close()
    server.publish({"event": liked(scene, 4)})
    b.expect_event(liked(scene, 4))
    server.publish({"event": feed_update(scene["fan"], 5)})
    b.expect_event(feed_update(scene["fan"], 5))
    b.barrier()


def test_a_new_tab_after_all_closed_gets_events(server, scene):
    a = server.connect(scene["fan"])
    a.subscribe({"type": "post", "postId": scene["post"]})
    a.close()
    c = server.connect(scene["fan"])
    server.publish({"event": feed_update(scene["fan"], 6)})
    c.expect_event(feed_update(scene["fan"], 6))
    c.subscribe({"type": "post", "postId": scene["post"]})
    server.publish({"event": liked(scene, 6)})
    c.expect_event(liked(scene, 6))
    c.barrier()


def test_unsubscribed_connection_stops_getting_channel_events(server, scene):
    ws = server.connect(scene["fan"])
    channel = {"type": "post", "postId": scene["post"]}
    ws.subscribe(channel)
    ws.unsubscribe(channel)
    server.publish({"event": liked(scene, 7)})
    ws.barrier()


# -- at most once ------------------------------------------------------------------------------

def test_event_for_channel_and_user_arrives_exactly_once(server, scene):
    ws = server.connect(scene["fan"])
    ws.subscribe({"type": "post", "postId": scene["post"]})
    event = liked(scene, 8)
    server.publish({"event": event, "channel": {"type": "post", "postId": scene["post"]}, "userId": scene["fan"]})
    ws.expect_event(event)
    ws.barrier()


def test_event_for_channel_key_and_user_arrives_exactly_once(server, scene):
    ws = server.connect(scene["fan"])
    ws.subscribe({"type": "post", "postId": scene["post"]})
    event = liked(scene, 9)
    server.publish({"event": event, "channel": f"post_{scene['post']}", "userId": scene["fan"]})
    ws.expect_event(event)
    ws.barrier()


def test_union_reaches_channel_holders_and_the_user_once_each(server, scene, seed):
    holder = server.connect(scene["creator"])
    holder.subscribe({"type": "post", "postId": scene["post"]})
    fan_tab = server.connect(scene["fan"])
    both = server.connect(scene["fan"])
    both.subscribe({"type": "post", "postId": scene["post"]})
    bystander = server.connect(seed.user())
    event = liked(scene, 10)
    server.publish({"event": event, "channel": {"type": "post", "postId": scene["post"]}, "userId": scene["fan"]})
    for ws in (holder, fan_tab, both):
        ws.expect_event(event)
        ws.barrier()
    bystander.barrier()


def test_subscribing_twice_does_not_double_delivery(server, scene):
    ws = server.connect(scene["fan"])
    channel = {"type": "post", "postId": scene["post"]}
    ws.subscribe(channel)
    ws.subscribe(channel)
    server.publish({"event": liked(scene, 11)})
    ws.expect_event(liked(scene, 11))
    ws.barrier()


def test_subscribing_twice_then_unsubscribing_once_stops_delivery(server, scene):
    ws = server.connect(scene["fan"])
    channel = {"type": "post", "postId": scene["post"]}
    ws.subscribe(channel)
    ws.subscribe(channel)
    ws.unsubscribe(channel)
    server.publish({"event": liked(scene, 12)})
    ws.barrier()


def test_own_notifications_channel_and_user_address_deliver_once(server, scene):
    """A `notification` goes to every connection of the user; a connection that also holds
    `notifications_<user>` still gets it once."""
    ws = server.connect(scene["fan"])
    ws.subscribe({"type": "notifications", "userId": scene["fan"]})
    plain = server.connect(scene["fan"])
    row = {"id": "n-x", "userId": scene["fan"], "type": "SYSTEM_ANNOUNCEMENT", "title": "t", "message": "m",
           "isRead": False, "metadata": None, "createdAt": "2025-07-01T12:00:00.000Z"}
    event = {"type": "notification", "userId": scene["fan"], "notification": row}
    server.publish({"event": event})
    ws.expect_event(event)
    plain.expect_event(event)
    ws.barrier()
    plain.barrier()


def test_events_on_one_connection_arrive_in_publish_order(server, scene):
    ws = server.connect(scene["fan"])
    ws.subscribe({"type": "post", "postId": scene["post"]})
    for n in range(10):
        server.publish({"event": liked(scene, 100 + n)})
    for n in range(10):
        ws.expect_event(liked(scene, 100 + n))
    ws.barrier()
