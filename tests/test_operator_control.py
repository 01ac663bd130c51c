"""Operators' control calls across every worker and host (PROTOCOL.md 9, issue 20):
`POST /api/disconnect`, `POST /api/unsubscribe`, `POST /api/revoke`, `DELETE /api/revoke/<U>`.

Two hosts x two gunicorn workers on a private redis-server (append-only, fsync always, so
a SIGKILL of it loses nothing it acknowledged) and one PostgreSQL database. A call answered
by one host must act on connections of every worker of both; a revocation must outlive
restarts of the workers and of Redis.
"""
from __future__ import annotations

import time

import jwt
import pytest

from support.redis_server import RedisServer
from support.redis_server import hosts as start_hosts
from support.redis_server import spread as spread_over
from support.waiting import wait_until
from support.ws import refused_handshake

pytestmark = pytest.mark.postgres

WORKERS = 2


@pytest.fixture(scope="module")
def rs(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("control-redis"), appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, pg_url, rs):
    with start_hosts(tmp_path_factory, "control-host", rs.url, WORKERS, pg_url) as servers:
        yield servers


def spread(hosts, user_id):
    """One connection of `user_id` on each of the four workers."""
    return spread_over(hosts, user_id, WORKERS)


def old_token(srv, user_id):
    """A token issued a minute ago: before any revocation this test makes."""
    return srv.token(user_id, iat=int(time.time()) - 60)


def test_disconnect_closes_every_connection_of_the_user_on_every_host(hosts, seed):
    a, b = hosts
    user, other = seed.user(), seed.user()
    mine = spread(hosts, user)
    bystander = a.connect(other)
    r = b.api("/api/disconnect", {"userId": user, "reason": "bye"})
    assert r.status_code == 202, r.text
    for where, ws in mine.items():
        assert ws.expect_closed() == 4010, f"{where} not closed with 4010"
    bystander.barrier()                        # someone else's connection is untouched
    # a chosen code in 4000-4999
    again = spread(hosts, user)
    assert a.api("/api/disconnect", {"userId": user, "code": 4321}).status_code == 202
    assert {ws.expect_closed() for ws in again.values()} == {4321}


@pytest.mark.parametrize("body", [{}, {"userId": "a b"}, {"userId": "u", "code": 1000},
                                  {"userId": "u", "code": 4010.5}, {"userId": "u", "reason": 5},
                                  {"userId": "u", "reason": "x" * 124}])
def test_disconnect_refuses_a_bad_body(hosts, body):
    r = hosts[0].api("/api/disconnect", body)
    assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text


def test_control_calls_need_the_key(hosts):
    srv = hosts[0]
    for path, method in (("/api/disconnect", "POST"), ("/api/unsubscribe", "POST"),
                         ("/api/revoke", "POST"), ("/api/revoke/u1", "DELETE")):
        r = srv.api(path, {"userId": "u1"}, key="wrong", method=method)
        assert r.status_code == 401, (path, r.status_code, r.text)


def test_unsubscribe_takes_the_channel_on_every_host_and_keeps_the_connection(hosts, seed):
    a, b = hosts
    creator = seed.user(is_creator=True)
    post = seed.post(creator)
    user = seed.user()
    channel = {"type": "post", "postId": post}
    mine = spread(hosts, user)
    for ws in mine.values():
        ws.subscribe(channel)
        ws.subscribe({"type": "creator", "id": creator})
    r = a.api("/api/unsubscribe", {"userId": user, "channel": channel})
    assert r.status_code == 202 and r.json()["channelKey"] == f"post_{post}", r.text
    for ws in mine.values():
        frame = ws.expect_error("access_revoked")
        assert frame["data"]["channel"] == channel
    # they stay connected and keep the other channel; the post's events no longer come
    b.publish({"event": {"type": "post_liked", "postId": post, "userId": creator, "likesCount": 1}})
    updated = {"type": "creator_updated", "creatorId": creator, "data": {"n": 1}}
    a.publish({"event": updated})
    for ws in mine.values():
        got = ws.expect_event(updated)
        assert got["type"] == "creator_updated"
        ws.barrier()
    # a new subscribe is judged by the normal rules (an open post: allowed)
    for ws in mine.values():
        ws.subscribe(channel)
    r = a.api("/api/unsubscribe", {"userId": user, "channel": "nonsense channel"})
    assert r.status_code == 400


def test_revoke_closes_refuses_and_lifts_on_every_host(hosts, seed):
    a, b = hosts
    user, other = seed.user(), seed.user()
    mine = spread(hosts, user)              # tokens issued now: iat <= the revocation's `before`
    bystander = b.connect(other)
    r = b.api("/api/revoke", {"userId": user, "before": time.time() + 1})
    assert r.status_code == 202, r.text
    for where, ws in mine.items():
        assert ws.expect_closed() == 4011, f"{where} not closed with 4011"
    bystander.barrier()
    # every worker of both hosts refuses the old token at the handshake
    for srv in hosts:
        for _ in range(4):              # handshakes land on either worker
            refusal = refused_handshake(srv.url(old_token(srv, user)))
            assert refusal.status == 401 and refusal.json() == {"error": "token_revoked"}, refusal
    # a token without iat counts as issued before
    no_iat = jwt.encode({"userId": user, "exp": int(time.time()) + 600}, a.jwt_secret, algorithm="HS256")
    refusal = refused_handshake(a.url(no_iat))
    assert refusal.status == 401 and refusal.json()["error"] == "token_revoked"
    # a token issued after `before` is fine, and `auth` with an old one is refused there
    fresh = a.connect(user, token=a.token(user, iat=int(time.time()) + 5))
    fresh.send_json({"type": "auth", "token": old_token(a, user)})
    fresh.expect_error("token_revoked")
    fresh.barrier()
    # lifted: the old token is accepted again everywhere (each worker hears it by pub/sub)
    r = a.api(f"/api/revoke/{user}", method="DELETE")
    assert r.status_code == 202, r.text
    for srv in hosts:
        def accepted(srv=srv):
            ws = srv.connect(user, token=old_token(srv, user))
            ws.close()
            return True
        wait_until(accepted, timeout=10, what=f"old token accepted on {srv.name} after DELETE")
    # ... on all four workers: each hears the lift by pub/sub on its own, so one worker
    # accepting (above) says nothing of the three others (a 401 from a worker that had not
    # heard it yet failed spread at once)
    wait_until(lambda: spread(hosts, user), timeout=10, what="the user accepted on all four workers")


def test_revocation_outlives_restarts_of_workers_and_of_redis(hosts, rs, seed):
    a, b = hosts
    user = seed.user()
    assert a.api("/api/revoke", {"userId": user, "before": time.time() + 1}).status_code == 202
    # every worker of host b restarted: the view is read back from Redis
    b.stop()
    b.start()
    for _ in range(4):
        refusal = refused_handshake(b.url(old_token(b, user)))
        assert refusal.status == 401 and refusal.json()["error"] == "token_revoked", refusal
    # Redis SIGKILLed and back (append-only file), then both hosts restarted
    rs.restart()
    for srv in hosts:
        srv.stop()
        srv.start()
    for srv in hosts:
        for _ in range(4):
            refusal = refused_handshake(srv.url(old_token(srv, user)))
            assert refusal.status == 401 and refusal.json()["error"] == "token_revoked", refusal
    # and the other users still connect everywhere
    spread(hosts, seed.user())


def test_without_redis_the_calls_act_in_process_and_revocations_outlive_a_restart(server_factory, pg_url, seed):
    """One worker, no REDIS_URL: the control message goes through the in-process broker and
    the revocation is kept in DATA_DIR's own SQLite file (never in PostgreSQL)."""
    srv = server_factory.start("control-solo", database_url=pg_url)
    user = seed.user()
    ws = srv.connect(user)
    assert srv.api("/api/disconnect", {"userId": user}).status_code == 202
    assert ws.expect_closed() == 4010
    ws = srv.connect(user, token=old_token(srv, user))
    assert srv.api("/api/revoke", {"userId": user}).status_code == 202
    assert ws.expect_closed() == 4011
    srv.stop()
    srv.start()
    refusal = refused_handshake(srv.url(old_token(srv, user)))
    assert refusal.status == 401 and refusal.json() == {"error": "token_revoked"}, refusal
    assert (srv.data_dir / "revocations.sqlite3").is_file()
    assert not seed.query("SELECT 1 FROM information_schema.tables WHERE table_name ILIKE '%%revok%%'")
    assert srv.api(f"/api/revoke/{user}", method="DELETE").status_code == 202
    srv.connect(user, token=old_token(srv, user))
