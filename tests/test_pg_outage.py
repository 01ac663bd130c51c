"""PostgreSQL goes away and comes back (issue 4, point 10; PROTOCOL.md 2.1, 2.2, 4).

A private cluster on a free port (tests/support/private_pg.py), never the shared one:
while it is down, new handshakes get 503 `unavailable`, subscribes that need the
database get `error` `unavailable` ("Failed to subscribe") on a connection that stays
open, events injected over HTTP still reach the clients that are connected, and
/ready is 503. When it is back, all of that works again without a restart.
"""
from __future__ import annotations

import datetime as dt

import pytest

from support.db import Seed, utcnow
from support.private_pg import PrivateCluster, unavailable_reason
from support.waiting import wait_until
from support.ws import refused_handshake

pytestmark = pytest.mark.postgres

FAILED_TO_SUBSCRIBE = "Failed to subscribe"


@pytest.fixture
def private_pg():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no private PostgreSQL cluster: {reason}")
    with PrivateCluster() as pg:
        yield pg


def _status(server, path):
    r = server.get(path)
    return r.status_code, r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text


def _status_if(server, path, wanted):
    got = _status(server, path)
    return got if got[0] == wanted else None


def _next_frames_until_error(client, limit: int = 3) -> list[dict]:
    frames = []
    for _ in range(limit):
        frame = client.recv_json()
        frames.append(frame)
        if isinstance(frame, dict) and frame.get("type") == "error":
            return frames
    raise AssertionError(f"no error frame among {frames!r}")


def test_postgres_outage_and_recovery(private_pg, server_factory):
    pg = private_pg
    seed = Seed(pg.url)
    try:
        author = seed.user(is_creator=True)
        reader = seed.user()
        open_post = seed.post(author)
        second_post = seed.post(author)
        older = seed.notification(reader, title="older", created_at=utcnow() - dt.timedelta(minutes=1))
        newest = seed.notification(reader, title="newest")
    finally:
        seed.close()

    # Positive user lookups are cached for WS_USER_CACHE_SECONDS (5 s by default): with the
    # cache off, every handshake asks the database, so the outage is visible at once.
    server = server_factory.start("pg-outage", database_url=pg.url, env={"WS_USER_CACHE_SECONDS": "0"})
    assert _status(server, "/ready")[0] == 200

    c_post = server.connect(reader)
    c_notif = server.connect(reader)
    worker = c_post.welcome["data"].get("worker")
    c_post.subscribe({"type": "post", "postId": open_post}, key=f"post_{open_post}")

    # ---- PostgreSQL stops --------------------------------------------------------------
    pg.stop()
    assert not pg.accepts_connections()

    status, body = wait_until(lambda: _status_if(server, "/ready", 503), 10,
                              "/ready answering 503 while PostgreSQL is down")
    assert isinstance(body, dict) and body.get("error") == "not_ready", body

    refusal = refused_handshake(server.url(server.token(reader)))
    assert refusal.status == 503, (refusal.status, refusal.body)
    assert refusal.json().get("error") == "unavailable", refusal.json()

    # a post channel needs the database to authorise: refused, connection stays open
    post_channel = {"type": "post", "postId": second_post}
    c_post.send_json({"type": "subscribe", "channel": post_channel})
    err = c_post.expect_error("unavailable", FAILED_TO_SUBSCRIBE)
    assert err["data"].get("channel") == post_channel, err
    c_post.barrier()

    # own notifications: the unread list needs the database -> `unavailable`, no unread frame
    notif_channel = {"type": "notifications", "userId": reader}
    c_notif.send_json({"type": "subscribe", "channel": notif_channel})
    frames = _next_frames_until_error(c_notif)
    assert [f.get("type") for f in frames] in (["error"], ["subscribed", "error"]), frames
    assert frames[-1]["data"].get("code") == "unavailable", frames
    assert frames[-1]["data"].get("message") == FAILED_TO_SUBSCRIBE, frames
    assert frames[-1]["data"].get("channel") == notif_channel, frames
    c_notif.barrier()

    # events injected over HTTP do not touch the database: still delivered
    liked = {"type": "post_liked", "postId": open_post, "userId": author, "likesCount": 7}
    server.publish({"event": liked})
    c_post.expect_event(liked)
    row = {"id": "n-outage", "userId": reader, "type": "SYSTEM_ANNOUNCEMENT", "title": "t", "message": "m",
           "isRead": False, "metadata": None, "createdAt": "2025-07-01T12:00:00.000Z"}
    pushed = {"type": "notification", "userId": reader, "notification": row}
    server.publish({"event": pushed})
    c_post.expect_event(pushed)
    c_notif.expect_event(pushed)

    # an API call that must write to the database says so, with a JSON 503
    r = server.api("/api/notifications", {"userId": reader, "type": "SYSTEM_ANNOUNCEMENT",
                                          "title": "x", "message": "y"})
    assert r.status_code == 503, (r.status_code, r.text[:300])
    assert r.json().get("error") == "unavailable", r.text[:300]

    assert c_post.is_open and c_notif.is_open
    assert server.proc.poll() is None, "the server exited during the outage"

    # ---- PostgreSQL is back: no restart needed -----------------------------------------
    pg.start()
    wait_until(lambda: _status_if(server, "/ready", 200), 15, "/ready answering 200 after PostgreSQL is back")

    again = server.connect(reader)
    assert again.welcome["data"].get("worker") == worker, "a new worker answered: the server restarted"

    c_post.subscribe(post_channel, key=f"post_{second_post}")
    c_notif.subscribe(notif_channel, key=f"notifications_{reader}")
    unread = c_notif.unread["data"]
    assert unread["total"] == 2 and unread["count"] == 2, unread
    assert [n["id"] for n in unread["notifications"]] == [newest, older], unread

    liked2 = {"type": "post_liked", "postId": second_post, "userId": author, "likesCount": 1}
    server.publish({"event": liked2})
    c_post.expect_event(liked2)

    r = server.api("/api/notifications", {"userId": reader, "type": "SYSTEM_ANNOUNCEMENT",
                                          "title": "back", "message": "again"})
    assert r.status_code == 201, (r.status_code, r.text[:300])
    created = r.json()
    for client in (c_post, c_notif, again):
        frame = client.expect_type("notification")
        assert frame["notification"]["id"] == created["id"], frame
    assert server.proc.poll() is None
