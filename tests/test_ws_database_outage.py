"""PostgreSQL going away and coming back (PROTOCOL.md 2.1 "if the database cannot be reached:
HTTP 503", 2.2 `unavailable`, 4 /ready). The server reaches the database through a TCP proxy
the test cuts; the real database keeps serving everybody else."""
import time

import pytest

from support.db import proxied
from support.server import ServerFactory
from support.ws import refused_handshake

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def outage(tmp_path_factory, pg_url):
    proxy, url = proxied(pg_url)
    factory = ServerFactory(tmp_path_factory)
    srv = factory.start("db-outage", database_url=url)
    yield srv, proxy
    factory.stop_all()
    proxy.close()


def _poll(predicate, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)  # polling a state the server exposes only over HTTP
    return False


def test_database_outage_and_recovery(outage, seed):
    srv, proxy = outage
    creator, early, late = seed.user(), seed.user(), seed.user()
    first_post, second_post = seed.post(creator), seed.post(creator)
    ws = srv.connect(early)
    ws.subscribe({"type": "post", "postId": first_post})
    assert srv.get("/ready").status_code == 200

    proxy.down()
    try:
        # a subscription that needs the database: `unavailable`, and the connection lives
        ws.send_json({"type": "subscribe", "channel": {"type": "post", "postId": second_post}})
        ws.expect_error("unavailable", "Failed to subscribe", timeout=15)
        ws.barrier()

        # a handshake that needs the database: 503 before the upgrade, so clients retry later
        r = refused_handshake(srv.url(srv.token(late)))
        assert r.status == 503, (r.status, r.body[:300])
        assert r.json(), r.body

        assert srv.get("/health").status_code == 200, "liveness must not depend on the database"
        ready = srv.get("/ready")
        assert ready.status_code == 503, (ready.status_code, ready.text[:300])

        r = srv.api("/api/notifications", {"userId": early, "type": "LIKE_POST", "title": "t", "message": "m"})
        assert r.status_code == 503, (r.status_code, r.text[:300])
        assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers

        # delivery does not touch the database
        event = {"type": "post_liked", "postId": first_post, "userId": creator, "likesCount": 1}
        srv.publish({"event": event})
        ws.expect_event(event)
    finally:
        proxy.up()

    assert _poll(lambda: srv.get("/ready").status_code == 200), "/ready did not come back after the database did"
    late_ws = srv.connect(late)
    late_ws.ping()
    ws.subscribe({"type": "post", "postId": second_post})
    r = srv.api("/api/notifications", {"userId": early, "type": "LIKE_POST", "title": "t", "message": "m"})
    assert r.status_code == 201, (r.status_code, r.text[:300])
    ws.expect_type("notification")
    ws.barrier()
