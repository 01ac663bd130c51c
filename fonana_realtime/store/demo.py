"""The demo seed: a few readable rows so everything can be tried at once.

SqliteStore seeds these when it creates its file; ``seed_demo(store)`` also
works on a PostgreSQL *dev* database that already has the tables
(``psql -f fonana_realtime/store/schema/postgres.sql`` first). Rows whose id
exists are skipped, so seeding twice is harmless. The ids are stable: the
README and manual tests use them.

Users
  ``demo-creator``   a creator (isCreator), author of all three posts
  ``demo-fan``       subscribed to demo-creator (active, COMPLETED, valid one year)
  ``demo-stranger``  no subscription; bought demo-paid-post (COMPLETED)

Posts (all by demo-creator)
  ``demo-open-post``    open: anyone may subscribe to ``post_demo-open-post``
  ``demo-locked-post``  isLocked, minSubscriptionTier 'premium': creator and demo-fan only
  ``demo-paid-post``    isLocked, price 0.5: creator, demo-fan and demo-stranger

Subscription ``demo-subscription-fan``: demo-fan -> demo-creator.
Purchase ``demo-purchase-stranger``: demo-stranger bought demo-paid-post.

Notifications (both unread, for demo-fan)
  ``demo-notification-1``  NEW_POST_FROM_SUBSCRIPTION, about demo-locked-post
  ``demo-notification-2``  SYSTEM_ANNOUNCEMENT (the newer one)
"""

from __future__ import annotations

from datetime import datetime, timedelta

from .rows import utc_now

CREATOR, FAN, STRANGER = "demo-creator", "demo-fan", "demo-stranger"
OPEN_POST, LOCKED_POST, PAID_POST = "demo-open-post", "demo-locked-post", "demo-paid-post"


def demo_rows(now: datetime | None = None) -> dict[str, list[dict]]:
    """The demo rows per table, in insertion (foreign key) order. Timestamps are naive UTC."""
    now = now or utc_now()

    def user(uid: str, name: str, creator: bool) -> dict:
        return {
            "id": uid,
            "wallet": f"{uid}-wallet",
            "nickname": uid.replace("-", "_"),
            "fullName": name,
            "name": name,
            "isCreator": creator,
            "createdAt": now,
            "updatedAt": now,
        }

    def post(pid: str, title: str, locked: bool, tier: str | None, price: float | None) -> dict:
        return {
            "id": pid,
            "creatorId": CREATOR,
            "title": title,
            "content": f"{title}: demo content.",
            "type": "text",
            "isLocked": locked,
            "isPremium": tier is not None,
            "price": price,
            "minSubscriptionTier": tier,
            "createdAt": now,
            "updatedAt": now,
        }

    return {
        "users": [
            user(CREATOR, "Demo Creator", True),
            user(FAN, "Demo Fan", False),
            user(STRANGER, "Demo Stranger", False),
        ],
        "posts": [
            post(OPEN_POST, "An open post", False, None, None),
            post(LOCKED_POST, "A premium post", True, "premium", None),
            post(PAID_POST, "A paid post", True, None, 0.5),
        ],
        "subscriptions": [
            {
                "id": "demo-subscription-fan",
                "userId": FAN,
                "creatorId": CREATOR,
                "plan": "premium",
                "price": 1.0,
                "subscribedAt": now,
                "validUntil": now + timedelta(days=365),
                "isActive": True,
                "paymentStatus": "COMPLETED",
            }
        ],
        "post_purchases": [
            {
                "id": "demo-purchase-stranger",
                "postId": PAID_POST,
                "userId": STRANGER,
                "price": 0.5,
                "purchasedAt": now,
                "paymentStatus": "COMPLETED",
            }
        ],
        "notifications": [
            {
                "id": "demo-notification-1",
                "userId": FAN,
                "type": "NEW_POST_FROM_SUBSCRIPTION",
                "title": "New post",
                "message": "Demo Creator published “A premium post”.",
                "isRead": False,
                "metadata": {"postId": LOCKED_POST, "creatorId": CREATOR},
                "createdAt": now - timedelta(minutes=2),
            },
            {
                "id": "demo-notification-2",
                "userId": FAN,
                "type": "SYSTEM_ANNOUNCEMENT",
                "title": "Welcome",
                "message": "Welcome to the Fonana realtime demo.",
                "isRead": False,
                "metadata": None,
                "createdAt": now - timedelta(minutes=1),
            },
        ],
    }


def seed_demo(store) -> int:
    """Insert the demo rows through ``store.insert_rows`` (Postgres or SQLite); how many were new."""
    return sum(store.insert_rows(table, rows) for table, rows in demo_rows().items())
