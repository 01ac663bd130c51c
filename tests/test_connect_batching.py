"""Handshakes and subscribes arriving together on PostgreSQL (issue 22): the user lookups
and unread lists one turn of the worker's loop asks for go out as one query each
(batcher.py). Each client must still get exactly its own answer: 101 or 401
`unknown_user` by its own user, its own unread list and total; a database that goes away
while they are out gives 503 / `unavailable`, never a wrong answer, and they come back
with it. Real gunicorn, real PostgreSQL, real clients in threads, so the requests overlap."""
import datetime as dt
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from websockets.exceptions import InvalidStatus

from support.db import new_id, proxied
from support.server import ServerFactory
from support.waiting import wait_until
from support.ws import open_ws

pytestmark = pytest.mark.postgres

CLIENTS = 40


def attempt(srv, user_id, *, subscribe=False):
    """One handshake (and a subscribe to its own notifications): ("101", welcome user,
    unread frame or None) or (HTTP status, JSON body, None)."""
    try:
        ws = open_ws(srv.url(srv.token(user_id)))
    except InvalidStatus as exc:
        r = exc.response
        return r.status_code, json.loads(bytes(r.body or b"{}") or b"{}"), None
    try:
        unread = None
        if subscribe:
            ws.send_json({"type": "subscribe", "channel": {"type": "notifications", "userId": user_id}})
            ws.expect_type("subscribed")
            unread = ws.recv_json()     # unread_notifications (or the error that takes its place)
            ws.barrier()                # nothing else came with them
        return 101, ws.welcome["data"]["userId"], unread
    finally:
        ws.close()


def all_at_once(srv, user_ids, **kw):
    """Every attempt in a thread of its own, released together."""
    start = threading.Barrier(len(user_ids))

    def one(uid):
        start.wait(timeout=30)
        return attempt(srv, uid, **kw)

    with ThreadPoolExecutor(len(user_ids)) as pool:
        return list(pool.map(one, user_ids))


def test_concurrent_handshakes_of_known_and_unknown_users_each_get_their_own_answer(server, seed):
    known = [seed.user() for _ in range(CLIENTS // 2)]
    unknown = [new_id("ghost") for _ in range(CLIENTS // 2 - 2)]
    # interleaved, and two known users twice (one key asked for twice in a batch)
    users = [u for pair in zip(known, unknown) for u in pair] + known[-2:] + known[:2]
    for uid, (status, body, _) in zip(users, all_at_once(server, users)):
        if uid in known:
            assert (status, body) == (101, uid), (uid, status, body)
        else:
            assert status == 401 and body == {"error": "unauthorized", "reason": "unknown_user"}, (uid, status, body)


def test_concurrent_subscribes_each_get_their_own_unread_list(server, seed):
    users = [seed.user() for _ in range(CLIENTS // 2)]
    base = seed.now - dt.timedelta(hours=1)
    expected = {}
    for i, uid in enumerate(users):
        unread = i + 3 if i % 3 else 0          # 0, 4, 5, 0, 7, ... 23: some over the 20 sent
        ids = [seed.notification(uid, title=f"{uid} {n}", created_at=base + dt.timedelta(seconds=n))
               for n in range(unread)]
        seed.notification(uid, read=True, created_at=base + dt.timedelta(hours=2))
        expected[uid] = (list(reversed(ids))[:20], unread)
    for uid, (status, who, unread) in zip(users, all_at_once(server, users, subscribe=True)):
        assert (status, who) == (101, uid)
        rows, total = expected[uid]
        assert unread["type"] == "unread_notifications", (uid, unread)
        data = unread["data"]
        assert [r["id"] for r in data["notifications"]] == rows, uid
        assert all(r["userId"] == uid and r["isRead"] is False for r in data["notifications"])
        assert (data["count"], data["total"]) == (len(rows), total), (uid, data["count"], data["total"])


@pytest.fixture
def behind_proxy(tmp_path_factory, pg_url):
    """A server of its own whose database connection goes through a proxy the test cuts."""
    proxy, url = proxied(pg_url)
    factory = ServerFactory(tmp_path_factory)
    srv = factory.start("batch-outage", database_url=url, env={"WS_USER_CACHE_SECONDS": 0})
    yield srv, proxy
    factory.stop_all()
    proxy.close()


def test_a_database_outage_under_concurrent_connects_degrades_and_recovers(behind_proxy, seed):
    srv, proxy = behind_proxy
    users = [seed.user() for _ in range(CLIENTS // 2)]
    for uid in users:
        seed.notification(uid)
    ghosts = [new_id("ghost") for _ in range(4)]
    early = srv.connect(users[0])             # connected before the outage

    proxy.down()
    try:
        # every handshake: 503 before the upgrade, never a 401 for a user who exists
        for uid, (status, body, _) in zip(users + ghosts, all_at_once(srv, users + ghosts)):
            assert status == 503 and body.get("reason") == "database_unavailable", (uid, status, body)
        # a subscribe: `subscribed`, then `unavailable` where the unread list would be; it lives on
        early.send_json({"type": "subscribe", "channel": {"type": "notifications", "userId": users[0]}})
        early.expect_type("subscribed")
        early.expect_error("unavailable", timeout=15)
        early.ping()
    finally:
        proxy.up()

    assert wait_until(lambda: srv.get("/ready").status_code == 200, timeout=20), "/ready did not come back"
    results = all_at_once(srv, users + ghosts, subscribe=True)
    for uid, (status, who, unread) in zip(users, results):
        assert (status, who) == (101, uid), (uid, status, who)
        assert unread["type"] == "unread_notifications", (uid, unread)
        assert unread["data"]["total"] == 1 and unread["data"]["notifications"][0]["userId"] == uid
    for uid, (status, body, _) in zip(ghosts, results[len(users):]):
        assert status == 401 and body["reason"] == "unknown_user", (uid, status, body)


def test_a_database_cut_while_connects_are_in_flight_answers_each_one_and_recovers(behind_proxy, seed):
    srv, proxy = behind_proxy
    users = [seed.user() for _ in range(CLIENTS)]
    ghosts = [new_id("ghost") for _ in range(CLIENTS // 4)]
    everyone = users + ghosts
    start = threading.Barrier(len(everyone) + 1)

    def one(uid):
        start.wait(timeout=30)
        return attempt(srv, uid, subscribe=True)

    with ThreadPoolExecutor(len(everyone)) as pool:
        futures = [pool.submit(one, uid) for uid in everyone]
        start.wait(timeout=30)
        proxy.down()                           # while their lookups are out, or about to be
        results = [f.result(timeout=60) for f in futures]
    try:
        for uid, (status, answer, unread) in zip(everyone, results):
            if status == 503:
                assert answer.get("reason") == "database_unavailable", (uid, answer)
            elif uid in ghosts:
                assert (status, answer["reason"]) == (401, "unknown_user"), (uid, status, answer)
            else:                               # upgraded before the cut: its own answers
                assert (status, answer) == (101, uid), (uid, status, answer)
                assert unread["type"] == "unread_notifications" or unread["data"]["code"] == "unavailable", unread
    finally:
        proxy.up()
    assert wait_until(lambda: srv.get("/ready").status_code == 200, timeout=20), "/ready did not come back"
    for uid, (status, who, unread) in zip(users, all_at_once(srv, users, subscribe=True)):
        assert (status, who) == (101, uid), (uid, status, who)
        assert unread["type"] == "unread_notifications" and unread["data"]["total"] == 0, (uid, unread)
