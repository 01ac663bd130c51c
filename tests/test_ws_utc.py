"""Timestamps are UTC whatever the host's and the database session's time zones say
(PROTOCOL.md section 6: naive TIMESTAMP(3) columns hold UTC; compare with UTC now; write
`createdAt` explicitly; ROW `createdAt` is ISO-8601 UTC with milliseconds and `Z`).

The server process runs at UTC+14 (TZ) and its PostgreSQL sessions at UTC-11 (PGTZ): a
server that uses local time, or the session's now(), gets one of these hours wrong.
"""
import datetime as dt

import pytest

from support.db import utcnow
from support.server import ServerFactory

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def tz_server(tmp_path_factory, pg_url):
    factory = ServerFactory(tmp_path_factory)
    srv = factory.start("tz-server", database_url=pg_url,
                        env={"TZ": "Pacific/Kiritimati", "PGTZ": "Pacific/Pago_Pago"})
    yield srv
    factory.stop_all()


@pytest.mark.parametrize("hours,allowed", [(2, True), (-2, False), (13, True), (-10, False)],
                         ids=["valid_2h", "expired_2h", "valid_13h", "expired_10h"])
def test_subscription_validity_is_judged_in_utc(tz_server, seed, hours, allowed):
    creator, viewer = seed.user(), seed.user()
    post_id = seed.post(creator, locked=True, tier="premium")
    seed.subscription(viewer, creator, valid_until=utcnow() + dt.timedelta(hours=hours))
    channel = {"type": "post", "postId": post_id}
    ws = tz_server.connect(viewer)
    if allowed:
        ws.subscribe(channel)
    else:
        ws.subscribe_denied(channel)


def test_unread_notifications_createdAt_is_the_stored_utc_value(tz_server, seed):
    uid = seed.user()
    stored = dt.datetime(2025, 7, 1, 23, 59, 59, 999000)
    seed.notification(uid, created_at=stored)
    ws = tz_server.connect(uid)
    ws.subscribe({"type": "notifications", "userId": uid})
    assert [n["createdAt"] for n in ws.unread["data"]["notifications"]] == ["2025-07-01T23:59:59.999Z"]


def test_created_notification_is_stamped_with_utc_now(tz_server, seed):
    uid = seed.user()
    ws = tz_server.connect(uid)
    before = utcnow()
    r = tz_server.api("/api/notifications", {"userId": uid, "type": "LIKE_POST", "title": "t", "message": "m"})
    after = utcnow()
    assert r.status_code == 201, (r.status_code, r.text[:300])
    row = r.json()
    created = dt.datetime.strptime(row["createdAt"], "%Y-%m-%dT%H:%M:%S.%fZ")
    slack = dt.timedelta(minutes=5)
    assert before - slack <= created <= after + slack, f"createdAt {row['createdAt']} is not UTC now ({before})"
    stored = seed.notification_row(row["id"])["createdAt"]
    assert before - slack <= stored <= after + slack, f"stored createdAt {stored} is not UTC now ({before})"
    ws.expect_event({"type": "notification", "userId": uid, "notification": row})
    # and it sorts as the newest unread, above one written a minute ago
    seed.notification(uid, created_at=utcnow() - dt.timedelta(minutes=1))
    ws.subscribe({"type": "notifications", "userId": uid})
    assert ws.unread["data"]["notifications"][0]["id"] == row["id"]
