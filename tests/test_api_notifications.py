"""POST /api/notifications, /api/notifications/read, /api/notifications/clear (PROTOCOL.md 4)
checked against the database and against what every connection of the user receives."""
import datetime as dt
import re

import pytest

from support.db import NOTIFICATION_TYPES, ROW_KEYS, utcnow

pytestmark = pytest.mark.postgres

ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def iso(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_iso(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")


def assert_json_error(r, status):
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and body, body
    return body


# -- POST /api/notifications ------------------------------------------------------------------

def test_create_notification_returns_row_inserts_it_and_pushes_it(server, seed):
    uid = seed.user()
    tabs = [server.connect(uid), server.connect(uid)]
    subscribed = server.connect(uid)
    subscribed.subscribe({"type": "notifications", "userId": uid})
    bystander = server.connect(seed.user())
    before = utcnow()
    metadata = {"postId": "p-1", "amount": 1.25, "nested": {"ok": True}}
    r = server.api("/api/notifications", {"userId": uid, "type": "TIP_RECEIVED", "title": "Tip!",
                                          "message": "You got a tip", "metadata": metadata})
    after = utcnow()
    assert r.status_code == 201, (r.status_code, r.text[:500])
    row = r.json()
    assert set(row) == ROW_KEYS, row
    assert row["userId"] == uid
    assert row["type"] == "TIP_RECEIVED"
    assert (row["title"], row["message"]) == ("Tip!", "You got a tip")
    assert row["isRead"] is False
    assert row["metadata"] == metadata
    assert isinstance(row["id"], str) and row["id"]
    assert ISO_MS_Z.match(row["createdAt"]), row["createdAt"]
    # createdAt is UTC "now" (a wrong time zone would be hours away)
    created = parse_iso(row["createdAt"])
    assert before - dt.timedelta(minutes=5) <= created <= after + dt.timedelta(minutes=5), (before, created)

    db = seed.notification_row(row["id"])
    assert db is not None, "the row is not in the notifications table"
    assert db["userId"] == uid and db["type"] == "TIP_RECEIVED" and db["isRead"] is False
    assert (db["title"], db["message"], db["metadata"]) == ("Tip!", "You got a tip", metadata)
    assert iso(db["createdAt"]) == row["createdAt"], (db["createdAt"], row["createdAt"])

    event = {"type": "notification", "userId": uid, "notification": row}
    for ws in tabs + [subscribed]:
        ws.expect_event(event)
        ws.barrier()
    bystander.barrier()


def test_create_notification_without_metadata(server, seed):
    uid = seed.user()
    ws = server.connect(uid)
    r = server.api("/api/notifications", {"userId": uid, "type": "SYSTEM_ANNOUNCEMENT", "title": "T",
                                          "message": "M"})
    assert r.status_code == 201, (r.status_code, r.text[:500])
    row = r.json()
    assert row["metadata"] is None, row
    assert seed.notification_row(row["id"])["metadata"] is None
    ws.expect_event({"type": "notification", "userId": uid, "notification": row})


@pytest.mark.parametrize("ntype", NOTIFICATION_TYPES)
def test_every_notification_type_is_accepted(server, seed, ntype):
    uid = seed.user()
    r = server.api("/api/notifications", {"userId": uid, "type": ntype, "title": "t", "message": "m"})
    assert r.status_code == 201, (r.status_code, r.text[:500])
    assert r.json()["type"] == ntype
    assert seed.notification_row(r.json()["id"])["type"] == ntype


def test_created_notification_shows_in_unread_notifications(server, seed):
    uid = seed.user()
    seed.notification(uid, created_at=utcnow() - dt.timedelta(hours=1))
    r = server.api("/api/notifications", {"userId": uid, "type": "NEW_MESSAGE", "title": "t", "message": "m"})
    assert r.status_code == 201, (r.status_code, r.text[:500])
    ws = server.connect(uid)
    ws.subscribe({"type": "notifications", "userId": uid})
    data = ws.unread["data"]
    assert (data["count"], data["total"]) == (2, 2), data
    assert data["notifications"][0] == r.json()


def test_two_notifications_get_distinct_ids(server, seed):
    uid = seed.user()
    body = {"userId": uid, "type": "LIKE_POST", "title": "t", "message": "m"}
    a, b = server.api("/api/notifications", body), server.api("/api/notifications", body)
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]
    assert len(seed.notifications_of(uid)) == 2


# The validation matrix (unknown type, unknown user, missing or wrongly typed fields,
# malformed bodies) runs in-process: tests/test_api_inprocess.py.


# -- POST /api/notifications/read ---------------------------------------------------------------

def test_mark_read(server, seed):
    uid = seed.user()
    nid = seed.notification(uid)
    keep = seed.notification(uid)
    tabs = [server.connect(uid), server.connect(uid)]
    bystander = server.connect(seed.user())
    r = server.api("/api/notifications/read", {"userId": uid, "notificationId": nid})
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert seed.notification_row(nid)["isRead"] is True
    assert seed.notification_row(keep)["isRead"] is False
    for ws in tabs:
        ws.expect_event({"type": "notification_read", "userId": uid, "notificationId": nid})
        ws.barrier()
    bystander.barrier()


def test_mark_read_of_someone_elses_notification_is_404_and_changes_nothing(server, seed):
    owner, intruder = seed.user(), seed.user()
    nid = seed.notification(owner)
    owner_ws, intruder_ws = server.connect(owner), server.connect(intruder)
    r = server.api("/api/notifications/read", {"userId": intruder, "notificationId": nid})
    assert_json_error(r, 404)
    assert r.json() == {"error": "not_found"}
    assert seed.notification_row(nid)["isRead"] is False
    owner_ws.barrier()
    intruder_ws.barrier()


def test_mark_read_of_a_missing_notification_is_404(server, seed):
    uid = seed.user()
    ws = server.connect(uid)
    r = server.api("/api/notifications/read", {"userId": uid, "notificationId": "no-such-notification"})
    assert_json_error(r, 404)
    assert r.json() == {"error": "not_found"}
    ws.barrier()


@pytest.mark.parametrize("missing", ["userId", "notificationId"])
def test_mark_read_with_a_missing_field_is_400(server, seed, missing):
    uid = seed.user()
    nid = seed.notification(uid)
    body = {"userId": uid, "notificationId": nid}
    del body[missing]
    assert_json_error(server.api("/api/notifications/read", body), 400)
    assert seed.notification_row(nid)["isRead"] is False


def test_mark_read_of_a_read_notification_answers_the_row_and_pushes_nothing(server, seed):
    uid = seed.user()
    nid = seed.notification(uid)
    ws = server.connect(uid)
    first = server.api("/api/notifications/read", {"userId": uid, "notificationId": nid})
    assert first.status_code == 200, first.text[:300]
    ws.expect_event({"type": "notification_read", "userId": uid, "notificationId": nid})
    again = server.api("/api/notifications/read", {"userId": uid, "notificationId": nid})
    assert again.status_code == 200 and again.json() == first.json(), again.text[:300]
    assert again.json()["notification"]["isRead"] is True
    ws.barrier()                        # no second notification_read


def test_concurrent_reads_of_one_notification_push_once(server, seed):
    from concurrent.futures import ThreadPoolExecutor
    uid = seed.user()
    nid = seed.notification(uid)
    ws = server.connect(uid)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: server.api("/api/notifications/read",
                                                     {"userId": uid, "notificationId": nid}), range(24)))
    assert [r.status_code for r in answers] == [200] * 24
    ws.expect_event({"type": "notification_read", "userId": uid, "notificationId": nid})
    ws.barrier()                        # exactly one push for 24 reads


# -- POST /api/notifications/clear -------------------------------------------------------------

def test_clear_marks_all_read_and_pushes(server, seed):
    uid, other = seed.user(), seed.user()
    for _ in range(3):
        seed.notification(uid)
    seed.notification(uid, read=True)
    others = seed.notification(other)
    tabs = [server.connect(uid), server.connect(uid)]
    other_ws = server.connect(other)
    r = server.api("/api/notifications/clear", {"userId": uid})
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert r.json() == {"cleared": 3}
    assert seed.unread_count(uid) == 0
    assert seed.notification_row(others)["isRead"] is False
    for ws in tabs:
        ws.expect_event({"type": "notifications_cleared", "userId": uid})
        ws.barrier()
    other_ws.barrier()


def test_clear_with_nothing_unread_is_zero(server, seed):
    uid = seed.user()
    seed.notification(uid, read=True)
    ws = server.connect(uid)
    r = server.api("/api/notifications/clear", {"userId": uid})
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert r.json() == {"cleared": 0}
    ws.barrier()                        # a clear that cleared nothing pushes nothing


def test_clear_then_subscribe_sees_no_unread(server, seed):
    uid = seed.user()
    seed.notification(uid)
    r = server.api("/api/notifications/clear", {"userId": uid})
    assert r.status_code == 200 and r.json() == {"cleared": 1}, r.text
    ws = server.connect(uid)
    ws.subscribe({"type": "notifications", "userId": uid})
    assert (ws.unread["data"]["count"], ws.unread["data"]["total"]) == (0, 0)
