"""Presence over every worker and host (PROTOCOL.md 9, issue 20): `GET /api/presence/<key>`,
`?keys=`, `GET /api/connections`, `GET /api/channels`, `GET /api/info`.

Two hosts x two gunicorn workers on a private redis-server and one PostgreSQL database.
Presence is eventually consistent (a few seconds), so each check waits for its condition
with a bounded poll (support.waiting), never a fixed sleep. Last: a host's gunicorn master
and workers are SIGKILLed and their entries must stop counting within a minute.
"""
from __future__ import annotations

import os
import signal

import pytest

from support.redis_server import RedisServer
from support.redis_server import hosts as start_hosts
from support.redis_server import spread as spread_over
from support.waiting import wait_until

pytestmark = pytest.mark.postgres

WORKERS = 2


@pytest.fixture(scope="module")
def rs(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("presence-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, pg_url, rs):
    with start_hosts(tmp_path_factory, "presence-host", rs.url, WORKERS, pg_url) as servers:
        yield servers


def get(srv, path):
    r = srv.api(path, method="GET")
    assert r.status_code == 200, f"{path} -> {r.status_code} {r.text[:300]}"
    return r.json()


def presence(srv, key):
    return get(srv, f"/api/presence/{key}")


@pytest.fixture
def scene(seed):
    creator = seed.user(is_creator=True)
    return {"creator": creator, "post": seed.post(creator), "fan": seed.user(), "other": seed.user()}


def test_presence_counts_users_and_connections_over_every_worker_and_host(hosts, scene):
    a, b = hosts
    post_key = f"post_{scene['post']}"
    channel = {"type": "post", "postId": scene["post"]}
    mine = spread_over(hosts, scene["fan"], WORKERS)
    for ws in mine.values():
        ws.subscribe(channel)
    theirs = b.connect(scene["other"])
    theirs.subscribe(channel)
    want = {"channel": post_key, "connections": 5, "users": sorted([scene["fan"], scene["other"]])}
    for srv in hosts:                         # either host answers for both
        wait_until(lambda srv=srv: presence(srv, post_key) == want, timeout=10,
                   what=f"presence of {post_key} on {srv.name}")
    # spread() closed the user's extra connections (those that landed on a worker already
    # reached) before the subscribes, but a worker writes their departures in its own batch:
    # the user's hash may count one of them for a moment after the post's is complete
    fan_key = f"user_{scene['fan']}"
    wait_until(lambda: presence(a, fan_key) == {"channel": fan_key, "connections": 4, "users": [scene["fan"]]},
               timeout=10, what=f"presence of {fan_key}")
    counts = get(b, f"/api/presence?keys={post_key},user_{scene['other']},creator_nobody")["counts"]
    assert counts == {post_key: 5, f"user_{scene['other']}": 1, "creator_nobody": 0}
    # every connection of the user, with where it is
    def four():
        found = get(a, f"/api/connections?userId={scene['fan']}")["connections"]
        return found if len(found) == 4 else None
    found = wait_until(four, timeout=10, what="the user's four connections")
    assert {(c["worker"], c["connectionId"]) for c in found} == \
        {(ws.welcome["data"]["worker"], ws.welcome["data"]["connectionId"]) for ws in mine.values()}
    for c in found:
        assert c["protocol"] == "legacy" and c["channels"] == [post_key]
        assert c["clientAddress"] == "127.0.0.1" and c["connectedSince"] > 0 and c["host"]
    # the busiest channels and the workers come with each worker's heartbeat (seconds)
    wait_until(lambda: {"channel": post_key, "connections": 5} in get(b, "/api/channels?limit=5")["channels"],
               timeout=10, what="busiest channels")
    pids = {ws.welcome["data"]["worker"] for ws in mine.values()}
    # each worker's entry comes with its own heartbeat: all four in, and its counts current
    info = wait_until(lambda: (i := get(a, "/api/info"))["connections"] >= 5 and len(i["workers"]) == 4 and i,
                      timeout=10, what="info")
    assert {w["pid"] for w in info["workers"]} == pids and len(info["workers"]) == 4
    assert all(w["brokerLink"] == "ok" and w["broker"] == "redis" for w in info["workers"])
    assert sum(w["subscriptions"] for w in info["workers"]) >= 5
    # leaving: an unsubscribe, a disconnect
    first = next(iter(mine.values()))
    first.unsubscribe(channel)
    wait_until(lambda: presence(b, post_key)["connections"] == 4, timeout=10, what="unsubscribe seen")
    theirs.close()
    wait_until(lambda: presence(a, post_key) == {"channel": post_key, "connections": 3, "users": [scene["fan"]]},
               timeout=10, what="disconnect seen")
    assert a.api("/api/disconnect", {"userId": scene["fan"]}).status_code == 202
    wait_until(lambda: get(b, f"/api/connections?userId={scene['fan']}")["connections"] == [],
               timeout=10, what="operator disconnect seen")


@pytest.mark.parametrize("path", ["/api/presence/nonsense", "/api/presence/post_a%20b", "/api/presence",
                                  "/api/presence?keys=post_ok,bad%20key", "/api/connections",
                                  "/api/connections?userId=a%20b", "/api/channels?limit=0",
                                  "/api/channels?limit=x"])
def test_presence_refuses_bad_queries(hosts, path):
    r = hosts[0].api(path, method="GET")
    assert r.status_code == 400 and r.json()["error"] == "bad_request", (path, r.status_code, r.text)


def test_presence_needs_the_key(hosts):
    for path in ("/api/presence/post_x", "/api/connections?userId=u", "/api/channels", "/api/info"):
        assert hosts[0].api(path, method="GET", key="wrong").status_code == 401


def test_a_sigkilled_host_stops_counting_within_a_minute(hosts, scene):
    a, b = hosts
    post_key = f"post_{scene['post']}"
    channel = {"type": "post", "postId": scene["post"]}
    on_a = a.connect(scene["fan"])
    on_a.subscribe(channel)
    on_b = [b.connect(scene["other"]) for _ in range(3)]
    for ws in on_b:
        ws.subscribe(channel)
    wait_until(lambda: presence(a, post_key)["connections"] == 4, timeout=10, what="all four counted")
    # the whole host dies without a goodbye: master and workers, SIGKILL
    os.killpg(b.proc.pid, signal.SIGKILL)
    b.proc.wait(10)
    want = {"channel": post_key, "connections": 1, "users": [scene["fan"]]}
    wait_until(lambda: presence(a, post_key) == want, timeout=60, what="the dead host's entries gone")
    assert get(a, f"/api/connections?userId={scene['other']}")["connections"] == []
    # each worker is a node with its own heartbeat (every 3 s): the host's other worker,
    # whose last beat came later, may still count for those few seconds
    wait_until(lambda: len(get(a, "/api/info")["workers"]) == 2, timeout=30,
               what="the dead host's workers gone from /api/info")
    b.stop()


def test_without_redis_presence_is_the_one_worker(server_factory, pg_url, scene):
    srv = server_factory.start("presence-solo", database_url=pg_url)
    channel = {"type": "creator", "id": scene["creator"]}
    one, two = srv.connect(scene["fan"]), srv.connect(scene["other"])
    one.subscribe(channel)
    two.subscribe(channel)
    key = f"creator_{scene['creator']}"
    assert presence(srv, key) == {"channel": key, "connections": 2,
                                  "users": sorted([scene["fan"], scene["other"]])}
    found = get(srv, f"/api/connections?userId={scene['fan']}")["connections"]
    assert [c["channels"] for c in found] == [[key]]
    info = get(srv, "/api/info")["workers"]
    assert len(info) == 1 and info[0]["broker"] == "memory" and info[0]["connections"] == 2
    two.close()
    wait_until(lambda: presence(srv, key)["connections"] == 1, timeout=10, what="close seen")
