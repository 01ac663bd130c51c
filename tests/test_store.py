"""The store against real PostgreSQL and real SQLite: every behaviour runs on both.

PostgreSQL: a fresh database per module (see store_fixtures.py), tables emptied
per test, session time zone UTC+14 so any reliance on the session clock fails.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

# Import store_fixtures and the package whether or not tests/ is a package or the repo is on sys.path.
for _path in (Path(__file__).resolve().parents[1], Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from store_fixtures import drop_connections, rows, store, store_pg_url  # noqa: E402,F401
from support.db import ROW_KEYS  # noqa: E402

from fonana_realtime.store import (  # noqa: E402
    NOTIFICATION_TYPES,
    StoreUnavailable,
    UnknownNotificationType,
    open_store,
)
from fonana_realtime.store.demo import seed_demo  # noqa: E402
from fonana_realtime.store.postgres import PostgresStore  # noqa: E402
from fonana_realtime.store.rows import new_id, utc_now  # noqa: E402

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    from support.server import free_port
    return free_port()


# -- factory and ids ---------------------------------------------------------


def test_open_store_picks_the_backend(tmp_path):
    assert open_store("postgresql://u@127.0.0.1:1/db", str(tmp_path)).kind == "postgresql"
    assert open_store("postgres://u@127.0.0.1:1/db", str(tmp_path)).kind == "postgresql"
    data = tmp_path / "a" / "b"
    s = open_store("", str(data))
    assert s.kind == "sqlite" and (data / "fonana.sqlite3").is_file()
    s.close()
    with pytest.raises(ValueError) as err:
        open_store("mysql://root:hunter2@db/x", str(tmp_path))
    assert "hunter2" not in str(err.value)


def test_notification_types_are_the_enum():
    assert len(NOTIFICATION_TYPES) == 13 and "LIKE_POST" in NOTIFICATION_TYPES
    assert isinstance(NOTIFICATION_TYPES, frozenset)


def test_new_id_is_cuid_like_and_unique():
    ids = [new_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"c[0-9a-z]{24}", i) for i in ids)
    threaded: list[str] = []
    workers = [threading.Thread(target=lambda: threaded.extend(new_id() for _ in range(2000))) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(set(threaded) | set(ids)) == len(ids) + len(threaded)


# -- users and post access -----------------------------------------------------


def test_user_exists(store, rows):
    rows.user("alice")
    assert store.user_exists("alice") is True
    assert store.user_exists("bob") is False
    assert store.user_exists("ali\x00ce") is False
    store.ping()


def test_can_view_post_matrix(store, rows):
    now = rows.now
    creator = rows.user("creator")
    other_creator = rows.user("other-creator")
    for uid in ("stranger", "buyer", "pending-buyer", "fan", "expired", "inactive", "pending-fan", "other-fan"):
        rows.user(uid)
    rows.post(creator, id="open")
    rows.post(creator, id="empty-tier", tier="")
    rows.post(creator, id="locked", locked=True)
    rows.post(creator, id="premium", tier="premium")  # not isLocked, but a tier: not open
    rows.post(creator, id="locked-premium", locked=True, tier="premium")
    rows.post(creator, id="paid", locked=True, price=0.5)
    rows.purchase("buyer", "paid")
    rows.purchase("pending-buyer", "paid", status="PENDING")
    rows.subscription("fan", creator)
    rows.subscription("expired", creator, valid_until=now - timedelta(minutes=1))
    rows.subscription("inactive", creator, active=False)
    rows.subscription("pending-fan", creator, status="PENDING")
    rows.subscription("other-fan", other_creator)

    expected = {
        # (user, post): allowed
        ("creator", "locked"): True,  # the author
        ("creator", "locked-premium"): True,
        ("stranger", "open"): True,  # open post
        ("stranger", "empty-tier"): True,  # '' tier counts as open
        ("stranger", "locked"): False,
        ("stranger", "premium"): False,  # a tier without a subscription
        ("stranger", "locked-premium"): False,
        ("stranger", "paid"): False,
        ("buyer", "paid"): True,  # completed purchase
        ("buyer", "locked"): False,  # ...of another post only
        ("pending-buyer", "paid"): False,  # PENDING purchase
        ("fan", "locked"): True,  # active COMPLETED subscription
        ("fan", "premium"): True,
        ("fan", "paid"): True,
        ("expired", "locked"): False,  # validUntil in the past (session clock is UTC+14)
        ("inactive", "locked"): False,
        ("pending-fan", "locked"): False,
        ("other-fan", "locked"): False,  # subscribed to someone else
        ("fan", "missing-post"): False,  # a post that does not exist
        ("creator", "missing-post"): False,
        ("nobody", "open"): True,  # existence of the user is checked at the handshake, not here
        ("fan", "bad\x00id"): False,
    }
    actual = {key: store.can_view_post(*key) for key in expected}
    assert actual == expected


def test_post_access_until_says_until_when_access_holds(store, rows):
    """Author, open post and purchase do not lapse (LASTING); a subscription holds until
    its validUntil (one subscription per user and creator: UNIQUE ("userId", "creatorId"))
    (issue 8.6)."""
    from fonana_realtime.store import LASTING
    now = rows.now
    creator = rows.user("creator")
    for uid in ("stranger", "buyer", "fan", "expired", "buyer-and-fan"):
        rows.user(uid)
    rows.post(creator, id="open")
    rows.post(creator, id="locked", locked=True)
    rows.purchase("buyer", "locked")
    rows.purchase("buyer-and-fan", "locked")
    soon = now + timedelta(hours=1)
    rows.subscription("fan", creator, valid_until=soon)
    rows.subscription("expired", creator, valid_until=now - timedelta(minutes=1))
    rows.subscription("buyer-and-fan", creator, valid_until=soon)
    expected = {
        ("creator", "locked"): LASTING,
        ("stranger", "open"): LASTING,
        ("buyer", "locked"): LASTING,
        ("buyer-and-fan", "locked"): LASTING,      # the purchase outlives the subscription
        ("fan", "locked"): soon,
        ("expired", "locked"): None,
        ("stranger", "locked"): None,
        ("fan", "missing-post"): None,
        ("fan", "bad\x00id"): None,
    }
    actual = {key: store.post_access_until(*key) for key in expected}
    assert actual == expected
    assert all(store.can_view_post(*key) is (value is not None) for key, value in expected.items())


def test_subscription_expiry_is_compared_with_utc_now(store, rows):
    creator = rows.user("creator")
    rows.user("soon")
    rows.post(creator, id="locked", locked=True)
    # Valid for two more minutes in UTC; a session clock at UTC+14 would call it expired.
    rows.subscription("soon", creator, valid_until=rows.now + timedelta(minutes=2))
    assert store.can_view_post("soon", "locked") is True


# -- notifications ---------------------------------------------------------------


def test_unread_notifications_order_limit_total(store, rows):
    rows.user("u")
    rows.user("v")
    base = rows.now - timedelta(hours=1)
    for i in range(25):
        rows.notification("u", id=f"n{i:02d}", created_at=base + timedelta(seconds=i))
    rows.notification("u", id="read-1", created_at=base + timedelta(hours=2), read=True)
    rows.notification("v", id="other-1", created_at=base + timedelta(hours=2))

    page, total = store.unread_notifications("u")
    assert total == 25
    assert [r["id"] for r in page] == [f"n{i:02d}" for i in range(24, 4, -1)]  # 20 newest, newest first
    assert all(set(r) == ROW_KEYS and r["isRead"] is False and r["userId"] == "u" for r in page)
    assert page[0]["createdAt"] == (base + timedelta(seconds=24)).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{(base + timedelta(seconds=24)).microsecond // 1000:03d}Z"
    )

    page5, total5 = store.unread_notifications("u", limit=5)
    assert [r["id"] for r in page5] == ["n24", "n23", "n22", "n21", "n20"] and total5 == 25
    assert store.unread_notifications("u", limit=0) == ([], 25)
    assert store.unread_notifications("nobody") == ([], 0)


def test_existing_users_answers_many_ids_in_one_call(store, rows):
    for uid in ("a", "b", "c"):
        rows.user(uid)
    assert store.existing_users(["a", "nobody", "c", "a", "bad id!", "", "x" * 129]) == {"a", "c"}
    assert store.existing_users([]) == set()
    many = [f"ghost-{i}" for i in range(600)] + ["b"]           # more than one batch holds
    assert store.existing_users(many) == {"b"}


def test_unread_notifications_of_many_users_is_each_ones_unread(store, rows):
    base = rows.now - timedelta(hours=1)
    for uid, unread in (("u", 25), ("v", 3), ("w", 0)):
        rows.user(uid)
        for i in range(unread):
            rows.notification(uid, id=f"{uid}{i:02d}", created_at=base + timedelta(seconds=i))
        rows.notification(uid, id=f"{uid}-read", created_at=base + timedelta(hours=2), read=True)

    answer = store.unread_notifications_of(["u", "v", "w", "nobody", "bad id!"], 20)
    assert set(answer) == {"u", "v", "w", "nobody", "bad id!"}
    for uid in ("u", "v", "w", "nobody", "bad id!"):
        assert answer[uid] == store.unread_notifications(uid, 20)     # the same answer as one by one
    assert answer["u"][1] == 25 and len(answer["u"][0]) == 20 and answer["u"][0][0]["id"] == "u24"
    assert [r["id"] for r in answer["v"][0]] == ["v02", "v01", "v00"] and answer["v"][1] == 3
    assert answer["w"] == ([], 0) and answer["nobody"] == ([], 0)
    assert store.unread_notifications_of(["u", "v"], 0) == {"u": ([], 25), "v": ([], 3)}
    assert store.unread_notifications_of([], 20) == {}


def test_create_notification_returns_the_row(store, rows):
    rows.user("u")
    before = utc_now()
    meta = {"postId": "p1", "n": [1, 2.5, None, True], "text": "héllo “quotes”"}
    row = store.create_notification("u", "COMMENT_POST", "New comment", "Someone commented", meta)
    after = utc_now()

    assert set(row) == ROW_KEYS
    assert re.fullmatch(r"c[0-9a-z]{24}", row["id"])
    assert row["userId"] == "u" and row["type"] == "COMMENT_POST"
    assert row["title"] == "New comment" and row["message"] == "Someone commented"
    assert row["isRead"] is False and row["metadata"] == meta
    assert ISO_MS.match(row["createdAt"])
    created = row["createdAt"][:-1].replace("T", " ")
    assert before.isoformat(" ", "milliseconds") <= created <= after.isoformat(" ", "milliseconds")

    page, total = store.unread_notifications("u")
    assert total == 1 and page == [row]  # what was returned is what is stored

    plain = store.create_notification("u", "SYSTEM_ANNOUNCEMENT", "t", "m")
    assert plain["metadata"] is None
    listed = store.create_notification("u", "TIP_RECEIVED", "t", "m", [1, "two"])
    assert listed["metadata"] == [1, "two"]
    assert store.unread_notifications("u")[1] == 3


def test_create_notification_every_type(store, rows):
    rows.user("u")
    for t in sorted(NOTIFICATION_TYPES):
        assert store.create_notification("u", t, "t", "m")["type"] == t


def test_create_notification_rejects_unknown_type_before_the_database(store, rows, tmp_path):
    rows.user("u")
    with pytest.raises(UnknownNotificationType):
        store.create_notification("u", "NOT_A_TYPE", "t", "m")
    assert issubclass(UnknownNotificationType, ValueError)
    assert store.unread_notifications("u") == ([], 0)
    # Checked before touching the database: a store that cannot reach one still says so.
    dead = PostgresStore(f"postgresql://nobody@127.0.0.1:{_free_port()}/x")
    with pytest.raises(UnknownNotificationType):
        dead.create_notification("u", "like_post", "t", "m")
    dead.close()


def test_create_notification_unknown_user_and_bad_values(store, rows):
    rows.user("u")
    assert store.create_notification("ghost", "LIKE_POST", "t", "m") is None
    assert store.unread_notifications("ghost") == ([], 0)
    with pytest.raises(ValueError):
        store.create_notification("u", "LIKE_POST", "t\x00", "m")
    with pytest.raises(ValueError):
        store.create_notification("u", "LIKE_POST", "t", "m", {"x": object()})
    with pytest.raises(ValueError):
        store.create_notification("u", "LIKE_POST", "t", "m", {"x": "nul\x00"})
    assert store.unread_notifications("u") == ([], 0)


def test_mark_notification_read(store, rows):
    rows.user("u")
    rows.user("v")
    mine = store.create_notification("u", "LIKE_POST", "t", "m", {"k": 1})
    theirs = store.create_notification("v", "LIKE_POST", "t", "m")

    updated = store.mark_notification_read("u", mine["id"])
    assert updated == {**mine, "isRead": True}
    assert store.unread_notifications("u") == ([], 0)
    assert store.mark_notification_read("u", mine["id"]) == updated  # already read: same row

    assert store.mark_notification_read("u", theirs["id"]) is None  # not u's
    assert store.unread_notifications("v")[1] == 1  # unchanged
    assert store.mark_notification_read("u", "missing") is None


def test_read_notification_says_whether_this_call_changed_it(store, rows):
    rows.user("u")
    rows.user("v")
    mine = store.create_notification("u", "LIKE_POST", "t", "m")
    row, changed = store.read_notification("u", mine["id"])
    assert changed is True and row == {**mine, "isRead": True}
    assert store.read_notification("u", mine["id"]) == (row, False)
    assert store.read_notification("v", mine["id"]) is None
    assert store.read_notification("u", "missing") is None


def test_clear_notifications(store, rows):
    rows.user("u")
    rows.user("v")
    for _ in range(3):
        store.create_notification("u", "LIKE_POST", "t", "m")
    store.create_notification("v", "LIKE_POST", "t", "m")
    first = store.create_notification("u", "LIKE_POST", "t", "m")
    store.mark_notification_read("u", first["id"])

    assert store.clear_notifications("u") == 3
    assert store.unread_notifications("u") == ([], 0)
    assert store.clear_notifications("u") == 0
    assert store.unread_notifications("v")[1] == 1
    assert store.clear_notifications("nobody") == 0


# -- demo seed -------------------------------------------------------------------


def test_notification_of_is_the_users_row_or_none(store, rows):
    owner, other = rows.user(), rows.user()
    nid = rows.notification(owner, type="TIP_RECEIVED", metadata={"amount": 1})
    row = store.notification_of(owner, nid)
    assert set(row) == ROW_KEYS and row["id"] == nid and row["metadata"] == {"amount": 1}
    assert ISO_MS.match(row["createdAt"])
    assert store.notification_of(other, nid) is None          # not theirs
    assert store.notification_of(owner, "n-missing") is None
    assert store.notification_of(owner, "bad\x00id") is None


def test_recent_notifications_of_a_type_since_oldest_first(store, rows):
    """The candidates of POST /api/notifications/push (issue 19): that user's, that type,
    written at or after `since` (naive UTC: the stores never use the session clock)."""
    owner, other = rows.user(), rows.user()
    now = utc_now()
    old = rows.notification(owner, type="LIKE_POST", created_at=now - timedelta(minutes=5))
    first = rows.notification(owner, type="LIKE_POST", created_at=now - timedelta(seconds=3))
    second = rows.notification(owner, type="LIKE_POST", created_at=now - timedelta(seconds=1))
    rows.notification(owner, type="COMMENT_POST", created_at=now)
    rows.notification(other, type="LIKE_POST", created_at=now)
    found = store.recent_notifications(owner, "LIKE_POST", now - timedelta(seconds=10))
    assert [r["id"] for r in found] == [first, second]
    assert all(set(r) == ROW_KEYS for r in found)
    assert old not in [r["id"] for r in found]
    assert store.recent_notifications(owner, "NEW_SUBSCRIBER", now - timedelta(seconds=10)) == []


def test_post_likes(store, rows):
    """The seed's updatePostLikes read `likesCount` from the post (issue 19)."""
    creator = rows.user()
    assert store.post_likes(rows.post(creator)) == 0
    now = utc_now()
    rows.insert("posts", {"id": "p-liked", "creatorId": creator, "title": "t", "content": "c", "type": "text",
                          "likesCount": 7, "createdAt": now, "updatedAt": now})
    assert store.post_likes("p-liked") == 7
    assert store.post_likes("p-missing") is None


def test_demo_seed(store):
    inserted = seed_demo(store)
    assert inserted == (10 if store.kind == "postgresql" else 0)  # sqlite seeded itself on creation
    assert seed_demo(store) == 0  # idempotent
    for uid in ("demo-creator", "demo-fan", "demo-stranger"):
        assert store.user_exists(uid)
    access = {
        (u, p): store.can_view_post(u, p)
        for u in ("demo-creator", "demo-fan", "demo-stranger")
        for p in ("demo-open-post", "demo-locked-post", "demo-paid-post")
    }
    assert [k for k, ok in access.items() if not ok] == [("demo-stranger", "demo-locked-post")]
    page, total = store.unread_notifications("demo-fan")
    assert total == 2 and [r["id"] for r in page] == ["demo-notification-2", "demo-notification-1"]


def test_sqlite_file_created_seeded_once(tmp_path):
    data = tmp_path / "fresh" / "dir"
    s = open_store(None, str(data))
    path = data / "fonana.sqlite3"
    assert path.is_file()
    assert s.user_exists("demo-fan") and s.unread_notifications("demo-fan")[1] == 2
    assert s.clear_notifications("demo-fan") == 2
    s.close()
    with pytest.raises(StoreUnavailable):
        s.ping()

    again = open_store(None, str(data))
    assert again.unread_notifications("demo-fan") == ([], 0)  # not re-seeded
    assert again.user_exists("demo-creator")
    again.close()


# -- PostgreSQL: unavailability, recovery, the pool, gevent ---------------------------


def test_postgres_unreachable_raises_store_unavailable():
    store = open_store(f"postgresql://nobody@127.0.0.1:{_free_port()}/x", "/nonexistent")
    started = time.monotonic()
    for call in (
        store.ping,
        lambda: store.user_exists("u"),
        lambda: store.can_view_post("u", "p"),
        lambda: store.unread_notifications("u"),
        lambda: store.create_notification("u", "LIKE_POST", "t", "m"),
        lambda: store.mark_notification_read("u", "n"),
        lambda: store.clear_notifications("u"),
    ):
        with pytest.raises(StoreUnavailable) as err:
            call()
        assert err.value.__cause__ is None or not type(err.value.__cause__).__module__.startswith("psycopg2")
    assert time.monotonic() - started < 5
    store.close()


@pytest.mark.postgres
def test_postgres_missing_database_raises_store_unavailable(store_pg_url):
    url = store_pg_url.rsplit("/", 1)[0] + "/fonana_rt_store_does_not_exist"
    with pytest.raises(StoreUnavailable):
        PostgresStore(url).ping()


def test_postgres_connect_hang_is_bounded():
    """A peer that accepts TCP but never answers the startup packet: libpq connect_timeout (2 s minimum)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        store = PostgresStore(f"postgresql://nobody@127.0.0.1:{port}/x", connect_timeout=2)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.ping()
        assert time.monotonic() - started < 4.5


@pytest.mark.postgres
def test_postgres_recovers_after_connections_are_killed(store_pg_url):
    store = PostgresStore(store_pg_url, pool_size=3)
    try:
        store.insert_rows("users", [{"id": "u", "wallet": "wu", "updatedAt": utc_now()}])
        assert store.user_exists("u")
        drop_connections(store_pg_url)
        assert store.user_exists("u")  # a read retries once on a fresh connection

        drop_connections(store_pg_url)
        with pytest.raises(StoreUnavailable):  # a write is not retried (it may have been applied)
            store.clear_notifications("u")
        assert store.create_notification("u", "LIKE_POST", "t", "m") is not None  # the next call reconnects
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_pool_is_bounded_and_waits_time_out(store_pg_url):
    store = PostgresStore(store_pg_url, pool_size=2, pool_timeout=0.3)
    try:
        held = [store._pool.acquire(), store._pool.acquire()]
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="pool"):
            store.ping()
        assert 0.25 < time.monotonic() - started < 2
        for conn, _ in held:
            store._pool.release(conn, discard=False)
        store.ping()

        errors: list[BaseException] = []

        def hammer():
            try:
                for _ in range(20):
                    store.user_exists("x")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(store._pool._idle) <= 2
    finally:
        store.close()
    with pytest.raises(StoreUnavailable):
        store.ping()


@pytest.mark.postgres
def test_postgres_under_gevent_is_cooperative(store_pg_url):
    """In a gevent-patched process the store installs psycogreen: slow queries run concurrently
    and the hub keeps ticking; a hung connect is cut off by the store's own deadline.

    Concurrency is shown by a rendezvous in PostgreSQL, not by elapsed time (a loaded
    machine made "4 x 0.4 s queries within 1.2 s" fail): each of four statements counts
    itself in a sequence (non-transactional: every session sees it at once) and waits
    until five have, and the fifth is started by a greenlet only after it has ticked
    five times while the four wait. Serial statements, or a hub blocked by one of them,
    never meet: the statement deadline ends them with StoreUnavailable."""
    script = textwrap.dedent(
        """
        from gevent import monkey; monkey.patch_all()
        import socket, sys, time, uuid, gevent, psycopg2, psycopg2.extensions
        from fonana_realtime.store import StoreUnavailable
        from fonana_realtime.store.postgres import PostgresStore

        store = PostgresStore(sys.argv[1], pool_size=5, statement_timeout=25)
        assert store._green and psycopg2.extensions.get_wait_callback() is not None
        seq = "rendezvous_" + uuid.uuid4().hex[:12]
        admin = psycopg2.connect(sys.argv[1])
        admin.autocommit = True
        admin.cursor().execute(f"CREATE SEQUENCE {seq}")
        # bounded in the server too: a blocked client would never cancel it
        meet = (f"DO $$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN PERFORM nextval('{seq}'); "
                f"WHILE (SELECT last_value FROM {seq}) < 5 LOOP "
                f"IF clock_timestamp() > t0 + interval '20 seconds' THEN "
                f"RAISE EXCEPTION 'only % of 5 statements met', (SELECT last_value FROM {seq}); END IF; "
                f"PERFORM pg_sleep(0.01); END LOOP; END $$")
        run = lambda: store._run(lambda cur: cur.execute(meet), read_only=False)
        ticks = []

        def ticker():
            for _ in range(5):
                gevent.sleep(0.05)
                ticks.append(1)
            run()

        jobs = [gevent.spawn(run) for _ in range(4)] + [gevent.spawn(ticker)]
        gevent.joinall(jobs, raise_error=True)
        assert len(ticks) == 5
        admin.cursor().execute(f"DROP SEQUENCE {seq}")
        admin.close()
        assert store.user_exists("nobody") is False
        store.close()

        listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(8)
        hung = PostgresStore("postgresql://nobody@127.0.0.1:%d/x" % listener.getsockname()[1], connect_timeout=0.5)
        started = time.monotonic()
        try:
            hung.ping()
        except StoreUnavailable:
            pass
        else:
            raise AssertionError("expected StoreUnavailable")
        assert time.monotonic() - started < 1.8
        print("OK")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, store_pg_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr
