"""Streams nobody publishes to, and the in-process history's total bound (issue 18.3, 18.7).

Real gunicorn, real WebSocket clients, a private redis-server. Subscribing to ids nobody
publishes to must leave nothing behind for more than about a minute (it made a 24 h key
per id); the positions a subscriber is told must still recover exactly (PROTOCOL.md 7).
The in-process history stays within WS_HISTORY_MAX_STREAMS, and a client recovering an
evicted stream is told `recovered: false`, never given wrong events.
"""
from __future__ import annotations

import secrets

import pytest

from fonana_realtime.redis_history import GHOST_SECONDS, RedisHistory, meta_key
from support.hardening import metric_total
from support.redis_server import RedisServer
from support.v2 import expect_events, subscribe_v2, v2
from support.waiting import wait_until

pytestmark = pytest.mark.postgres

GHOSTS_PER_CONNECTION = 25


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory, pg_url):
    from support.server import Server
    rs = RedisServer(tmp_path_factory.mktemp("ghost-redis")).start()
    prefix = f"ghost-{secrets.token_hex(3)}:"
    srv = Server(tmp_path_factory.mktemp("ghost"), name="ghost-redis", database_url=pg_url,
                 env={"REDIS_URL": rs.url, "REDIS_PREFIX": prefix, "WS_WORKERS": 1}).start()
    srv.redis, srv.prefix = rs, prefix
    yield srv
    srv.stop()
    rs.stop()


def creator(id_: str) -> dict:
    return {"type": "creator", "id": id_}


def updated(id_: str) -> dict:
    return {"type": "creator_updated", "creatorId": id_, "data": {"n": 1}}


def open_connections(srv) -> float:
    return metric_total(srv, "fonana_rt_connections")


def test_ghost_subscriptions_leave_no_redis_key_that_outlives_them_by_more_than_a_minute(redis_srv, seed):
    srv, client = redis_srv, redis_srv.redis.client()
    users = [seed.user() for _ in range(3)]
    for user in users:
        for ws in (v2(srv, user), srv.connect(user)):            # fonana.v2 and legacy
            for _ in range(GHOSTS_PER_CONNECTION):
                ws.send_json({"type": "subscribe", "channel": creator(f"ghost{secrets.token_hex(6)}")})
            for _ in range(GHOSTS_PER_CONNECTION):
                ws.expect_type("subscribed")
            ws.close()
    wait_until(lambda: open_connections(srv) == 0, 10, "every connection gone")
    keys = list(client.scan_iter(match=srv.prefix + "*", count=1000))
    assert len(keys) >= 3 * GHOSTS_PER_CONNECTION                # the ghosts' metas exist, briefly
    lasting = {k: client.ttl(k) for k in keys}
    lasting = {k: ttl for k, ttl in lasting.items() if ttl == -1 or ttl > GHOST_SECONDS}
    assert lasting == {}, f"{len(lasting)} of {len(keys)} keys outlive the subscriptions by more than a minute"


def test_a_ghosts_subscriber_recovers_the_first_publish_and_that_publish_makes_it_last(redis_srv, seed):
    srv, client = redis_srv, redis_srv.redis.client()
    user, id_ = seed.user(), f"ghost{secrets.token_hex(6)}"
    ws = v2(srv, user)
    told = subscribe_v2(ws, creator(id_))
    assert told["offset"] == 0
    ws.close()                                                   # gone before the first event
    key = meta_key(srv.prefix, f"creator_{id_}")
    assert 0 < client.ttl(key) <= GHOST_SECONDS
    srv.publish({"event": updated(id_)})
    assert client.ttl(key) > GHOST_SECONDS                       # published: the meta's full lifetime
    back = v2(srv, user)
    again = subscribe_v2(back, creator(id_), since={"offset": 0, "epoch": told["epoch"]})
    assert (again["recovered"], again["epoch"], again["offset"]) == (True, told["epoch"], 1)
    [frame] = expect_events(back, f"creator_{id_}", [1], epoch=told["epoch"])
    assert frame["data"]["creatorId"] == id_
    back.close()


def test_a_ghost_held_by_a_worker_is_renewed_and_a_published_meta_is_left_alone(redis_srv):
    """What the worker runs every GHOST_SECONDS / 3 for the streams it holds."""
    client = redis_srv.redis.client()
    prefix = f"keep-{secrets.token_hex(3)}:"
    history = RedisHistory(client, prefix)
    history.position("creator_held")                             # a ghost
    history.publish(["channel:creator_pub"], b'{"type":"x"}')    # a stream
    client.expire(meta_key(prefix, "creator_held"), 5)           # as if 55 s went by
    history.keep_ghosts(["creator_held", "creator_pub", "creator_none"])
    assert client.ttl(meta_key(prefix, "creator_held")) > 5
    assert client.ttl(meta_key(prefix, "creator_pub")) > GHOST_SECONDS
    assert not client.exists(meta_key(prefix, "creator_none"))   # nothing made for a lost meta


# -- the in-process history's bound ------------------------------------------------------------

MAX_STREAMS = 40


@pytest.fixture(scope="module")
def bounded_srv(tmp_path_factory, pg_url):
    from support.server import Server
    srv = Server(tmp_path_factory.mktemp("bounded"), name="bounded", database_url=pg_url,
                 env={"WS_HISTORY_MAX_STREAMS": MAX_STREAMS}).start()
    yield srv
    srv.stop()


def test_in_process_history_keeps_at_most_max_streams_and_an_evicted_stream_is_not_recovered(bounded_srv, seed):
    srv, user = bounded_srv, seed.user()
    first = f"early{secrets.token_hex(4)}"
    ws = v2(srv, user)
    told = subscribe_v2(ws, creator(first))
    ws.close()
    srv.publish({"event": updated(first)})                       # offset 1 of the epoch it was told
    for n in range(3 * MAX_STREAMS):                             # other creators, each its own stream
        srv.publish({"events": [updated(f"later{n}x{secrets.token_hex(3)}")]})
    wait_until(lambda: 0 < metric_total(srv, "fonana_rt_history_streams") <= MAX_STREAMS, 15,
               "the streams gauge at the bound")
    assert metric_total(srv, "fonana_rt_history_evicted_total", what="stream") >= 2 * MAX_STREAMS
    back = v2(srv, user)
    again = subscribe_v2(back, creator(first), since={"offset": 0, "epoch": told["epoch"]})
    assert again["recovered"] is False and again["reason"] == "epoch"
    assert again["epoch"] != told["epoch"]
    back.barrier()                                               # nothing replayed
    back.close()
