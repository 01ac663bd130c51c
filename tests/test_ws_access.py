"""Who may subscribe to `post_<id>`: the full matrix of PROTOCOL.md 2.3, over real connections.

A post is open when `isLocked` is false and `minSubscriptionTier` is null or empty. Otherwise
access needs authorship, a COMPLETED purchase, or an active subscription to the post's creator
(`isActive`, `paymentStatus = 'COMPLETED'`, `validUntil` in the future, compared with UTC now).
A missing post is `access_denied`, never a different answer.
"""
import datetime as dt

import pytest

from support.db import utcnow

pytestmark = pytest.mark.postgres


STATUSES = {"PENDING", "PROCESSING", "COMPLETED", "FAILED", "REFUNDED"}


def _case(seed, name):
    """Seed one scenario; return (viewer, post_id, allowed)."""
    creator = seed.user(is_creator=True)
    viewer = seed.user()
    locked = seed.post(creator, locked=True, tier="premium")
    if name == "author_of_locked_post":
        return creator, locked, True
    if name == "open_post":
        return viewer, seed.post(creator, locked=False, tier=None), True
    if name == "open_post_empty_tier":
        return viewer, seed.post(creator, locked=False, tier=""), True
    if name == "unlocked_but_tier_basic":
        return viewer, seed.post(creator, locked=False, tier="basic"), False
    if name == "locked_without_tier":
        return viewer, seed.post(creator, locked=True, tier=None, price=2.0), False
    if name == "locked_stranger":
        return viewer, locked, False
    if name.startswith("purchase_") and name.split("_", 1)[1].upper() in STATUSES:
        status = name.split("_", 1)[1].upper()
        seed.purchase(viewer, locked, status=status)
        return viewer, locked, status == "COMPLETED"
    if name == "purchase_of_another_post":
        seed.purchase(viewer, seed.post(creator, locked=True, price=1.0))
        return viewer, locked, False
    if name == "purchase_by_someone_else":
        seed.purchase(seed.user(), locked)
        return viewer, locked, False
    if name == "subscription_active":
        seed.subscription(viewer, creator)
        return viewer, locked, True
    if name == "subscription_active_paid_post":
        seed.subscription(viewer, creator)
        return viewer, seed.post(creator, locked=True, price=3.0), True
    if name == "subscription_expired":
        seed.subscription(viewer, creator, valid_until=utcnow() - dt.timedelta(days=1))
        return viewer, locked, False
    if name == "subscription_inactive":
        seed.subscription(viewer, creator, active=False)
        return viewer, locked, False
    if name.startswith("subscription_status_"):
        status = name.rsplit("_", 1)[1].upper()
        seed.subscription(viewer, creator, status=status)
        return viewer, locked, status == "COMPLETED"
    if name == "subscription_to_another_creator":
        seed.subscription(viewer, seed.user(is_creator=True))
        return viewer, locked, False
    if name == "subscription_in_reverse_direction":
        seed.subscription(creator, viewer)
        return viewer, locked, False
    if name == "another_users_subscription":
        seed.subscription(seed.user(), creator)
        return viewer, locked, False
    if name == "missing_post":
        return viewer, "no-such-post-" + viewer[-8:], False
    if name == "missing_post_for_author_of_others":
        return creator, "no-such-post-" + creator[-8:], False
    raise AssertionError(name)


CASES = [
    "author_of_locked_post", "open_post", "open_post_empty_tier", "unlocked_but_tier_basic",
    "locked_without_tier", "locked_stranger",
    "purchase_completed", "purchase_pending", "purchase_processing", "purchase_failed", "purchase_refunded",
    "purchase_of_another_post", "purchase_by_someone_else",
    "subscription_active", "subscription_active_paid_post", "subscription_expired", "subscription_inactive",
    "subscription_status_pending", "subscription_status_processing", "subscription_status_failed",
    "subscription_status_refunded", "subscription_to_another_creator", "subscription_in_reverse_direction",
    "another_users_subscription", "missing_post", "missing_post_for_author_of_others",
]


@pytest.mark.parametrize("name", CASES)
def test_post_access(server, seed, name):
    viewer, post_id, allowed = _case(seed, name)
    channel = {"type": "post", "postId": post_id}
    ws = server.connect(viewer)
    if allowed:
        ws.subscribe(channel, key=f"post_{post_id}")
    else:
        frame = ws.subscribe_denied(channel)
        if "channel" in frame["data"]:
            assert frame["data"]["channel"] == channel, frame
    ws.barrier()


def test_denied_and_missing_posts_get_identical_answers(server, seed):
    """Existence is never revealed: a locked post and a missing one answer byte-for-byte alike
    (apart from the channel they echo)."""
    creator, viewer = seed.user(), seed.user()
    locked = seed.post(creator, locked=True, tier="vip")
    missing = "missing-" + locked[-12:]
    ws = server.connect(viewer)
    answers = []
    for pid in (locked, missing):
        ws.send_json({"type": "subscribe", "channel": {"type": "post", "postId": pid}})
        frame = ws.expect_error("access_denied", "Access denied to channel")
        frame["data"].pop("channel", None)
        answers.append(frame)
    assert answers[0] == answers[1]


def test_allowed_subscriber_receives_post_events_and_denied_one_does_not(server, seed):
    viewer, post_id, _ = _case(seed, "purchase_completed")
    stranger = seed.user()
    channel = {"type": "post", "postId": post_id}
    buyer = server.connect(viewer)
    buyer.subscribe(channel)
    other = server.connect(stranger)
    other.subscribe_denied(channel)
    event = {"type": "post_liked", "postId": post_id, "userId": stranger, "likesCount": 7}
    server.publish({"event": event})
    buyer.expect_event(event)
    other.barrier()
    buyer.barrier()
