"""Protocol v2 recovery with the history in Redis (PROTOCOL.md 7; issue 9, item 4):
two server instances ("hosts") x two gevent workers on one private redis-server, real
`websockets` clients negotiating `fonana.v2`.

- a server restart (SIGTERM drain, a new process on the same port) keeps the history:
  the client comes back with `since` and gets exactly what was published meanwhile by
  the other host, `recovered: true`;
- replay then live across hosts while the other host keeps publishing: contiguous offsets;
- positions are the same whichever host or worker a client is on;
- a Redis restart that lost the data: `recovered: false`, nothing replayed;
- a v2 client connected through a cut of the workers' Redis links gets every event once,
  with contiguous offsets (the broker's catch-up).
"""
from __future__ import annotations

import os
import secrets
import signal
import threading

import pytest

from support.v2 import expect_events, subscribe_v2, v2
from support.waiting import wait_until
from support.redis_server import SPREAD_WORKER_CONNECTIONS, RedisServer, spread
from support.server import Server

pytestmark = pytest.mark.postgres

WORKERS = 2


@pytest.fixture
def hosts(tmp_path, pg_url):
    rs = RedisServer(tmp_path / "redis").start()
    prefix = f"v2r-{secrets.token_hex(3)}:"
    servers = [Server(tmp_path / name, name=name, database_url=pg_url,
                      env={"REDIS_URL": rs.url, "REDIS_PREFIX": prefix, "WS_WORKERS": WORKERS,
                           "WS_WORKER_CONNECTIONS": SPREAD_WORKER_CONNECTIONS, "WS_DRAIN_SECONDS": 0})
               for name in ("v2-host-a", "v2-host-b")]
    for srv in servers:
        srv.start()
    try:
        yield rs, servers
    finally:
        for srv in servers:
            srv.stop()
        rs.stop()


@pytest.fixture
def scene(seed):
    creator = seed.user(is_creator=True)
    return {"creator": creator, "fan": seed.user(), "post": seed.post(creator)}


def ready(servers) -> bool:
    return all(srv.get("/ready").status_code == 200 for srv in servers for _ in range(4))




def post(scene):
    return {"type": "post", "postId": scene["post"]}


def liked(scene, n):
    return {"type": "post_liked", "postId": scene["post"], "userId": scene["fan"], "likesCount": n}


def publish(srv, events) -> list[dict]:
    body = {"events": events} if isinstance(events, list) else {"event": events}
    return srv.publish(body).json()["positions"]






def test_a_server_restart_keeps_the_history_and_the_client_recovers_exactly_what_it_missed(hosts, scene):
    _, (a, b) = hosts
    key = f"post_{scene['post']}"
    ws = v2(a, scene["fan"])
    sub = subscribe_v2(ws, post(scene))
    assert sub["stream"] == key and sub["offset"] == 0
    positions = publish(a, [liked(scene, n) for n in (1, 2)])
    assert positions == [{key: 1}, {key: 2}]
    last = expect_events(ws, key, [1, 2], epoch=sub["epoch"])[-1]
    os.kill(a.proc.pid, signal.SIGTERM)                      # the deploy: drained with 1001
    assert ws.expect_closed() == 1001
    a.stop()                                                 # the old process is gone
    assert publish(b, [liked(scene, n) for n in (3, 4, 5)]) == [{key: 3}, {key: 4}, {key: 5}]   # the other host
    a.start()                                                # a new process on the same port
    wait_until(lambda: ready([a]), 15, "the restarted host ready")
    back = v2(a, scene["fan"])
    data = subscribe_v2(back, post(scene), since={"offset": last["offset"], "epoch": last["epoch"]})
    assert data["recovered"] is True and data["epoch"] == sub["epoch"] and data["offset"] == 5
    frames = expect_events(back, key, [3, 4, 5], epoch=sub["epoch"])
    assert [f["data"]["likesCount"] for f in frames] == [3, 4, 5]
    back.barrier()
    publish(b, liked(scene, 6))                              # then live, from either host
    assert expect_events(back, key, [6])[0]["data"]["likesCount"] == 6
    back.barrier()


def test_every_host_and_worker_sees_the_same_positions(hosts, scene):
    _, servers = hosts
    key = f"post_{scene['post']}"
    clients = [v2(srv, scene["fan"]) for srv in servers for _ in range(3)]
    subs = [subscribe_v2(ws, post(scene)) for ws in clients]
    assert len({s["epoch"] for s in subs}) == 1
    for n in range(6):
        publish(servers[n % 2], liked(scene, n))
    seen = [[(f["id"], f["offset"], f["data"]["likesCount"]) for f in expect_events(ws, key, range(1, 7))]
            for ws in clients]
    assert all(s == seen[0] for s in seen)                   # same ids, offsets, order everywhere
    for ws in clients:
        ws.barrier()


def test_replay_then_live_across_hosts_while_the_other_host_publishes(hosts, scene):
    _, (a, b) = hosts
    key = f"post_{scene['post']}"
    watcher = v2(a, scene["fan"])
    sub = subscribe_v2(watcher, post(scene))
    publish(b, [liked(scene, n) for n in range(20)])         # history 1..20
    total = 140
    failures: list = []

    def hammer():
        try:
            for n in range(20, total):
                publish(b, liked(scene, n))
        except Exception as exc:                             # surfaced below
            failures.append(exc)

    publisher = threading.Thread(target=hammer)
    clients = [v2(a, scene["fan"]) for _ in range(4)]
    publisher.start()
    try:
        for n, ws in enumerate(clients):
            data = subscribe_v2(ws, post(scene), since={"offset": n * 4, "epoch": sub["epoch"]})
            assert data["recovered"] is True
    finally:
        publisher.join(60)
    assert not failures, failures
    for n, ws in enumerate(clients + [watcher]):
        start = n * 4 if ws is not watcher else 0
        expect_events(ws, key, range(start + 1, total + 1))  # contiguous, once each
        ws.barrier()


def test_a_redis_that_lost_its_data_is_never_recovered_from(hosts, scene):
    rs, (a, b) = hosts
    key = f"post_{scene['post']}"
    ws = v2(a, scene["fan"])
    sub = subscribe_v2(ws, post(scene))
    publish(a, [liked(scene, n) for n in (1, 2, 3)])
    expect_events(ws, key, [1, 2, 3])
    rs.restart()                                             # no persistence: history and offsets gone
    wait_until(lambda: ready([a, b]), 15, "both hosts ready after the Redis restart")
    back = v2(b, scene["fan"])
    data = subscribe_v2(back, post(scene), since={"offset": 1, "epoch": sub["epoch"]})
    assert data["recovered"] is False and data["epoch"] != sub["epoch"] and data["reason"] == "epoch"
    back.barrier()                                           # nothing replayed
    publish(a, liked(scene, 4))
    frame = expect_events(back, key, [data["offset"] + 1], epoch=data["epoch"])[0]
    assert frame["data"]["likesCount"] == 4


def test_a_v2_client_through_a_cut_of_the_redis_links_gets_contiguous_offsets(hosts, scene):
    rs, servers = hosts
    key = f"post_{scene['post']}"
    # A worker starts its listener with its first request: make every worker serve one,
    # so the cut below reaches all four listeners.
    for ws in spread(servers, scene["fan"], WORKERS).values():
        ws.close()
    clients = [v2(srv, scene["fan"]) for srv in servers for _ in range(3)]
    for ws in clients:
        subscribe_v2(ws, post(scene))
    publish(servers[0], liked(scene, 0))
    for ws in clients:
        expect_events(ws, key, [1])
    r = rs.client()
    wait_until(lambda: len(r.client_list(_type="pubsub")) == 2 * len(servers), 15,
               "every worker's listener connected")
    wait_until(lambda: ready(servers), 15, "every worker caught up and live")
    assert r.client_kill_filter(_type="pubsub") == 2 * WORKERS
    for n in range(1, 11):
        publish(servers[n % 2], liked(scene, n))
    for ws in clients:
        frames = expect_events(ws, key, range(2, 12))
        assert [f["data"]["likesCount"] for f in frames] == list(range(1, 11))
        ws.barrier()
    r.close()
