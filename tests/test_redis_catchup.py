"""A worker whose link to Redis comes back catches up from history before going live
(issue 9, item 4): no event accepted with 202 is lost to a connected client, none is
delivered twice, and after Redis lost its data nothing from before is replayed.

Two server instances ("two hosts") x two gevent workers on one private redis-server,
a connection of one user on every worker, real HTTP publishes through both hosts.
"""
from __future__ import annotations

import os
import secrets
import signal
import time

import pytest

from fonana_realtime.publisher import RedisPublisher
from support.waiting import wait_until
from support.hardening import metric_total
from support.redis_server import SPREAD_WORKER_CONNECTIONS, RedisServer, spread
from support.server import Server

pytestmark = pytest.mark.postgres

WORKERS = 2


def start_hosts(tmp_path, pg_url, extra_env=None):
    rs = RedisServer(tmp_path / "redis").start()
    prefix = f"cu-{secrets.token_hex(3)}:"
    servers = [Server(tmp_path / name, name=name, database_url=pg_url,
                      env={"REDIS_URL": rs.url, "REDIS_PREFIX": prefix, "WS_WORKERS": WORKERS,
                           "WS_WORKER_CONNECTIONS": SPREAD_WORKER_CONNECTIONS, **(extra_env or {})})
               for name in ("host-a", "host-b")]
    for srv in servers:
        srv.start()
    return rs, servers


def stop_hosts(rs, servers):
    for srv in servers:
        srv.stop()
    rs.stop()


@pytest.fixture
def hosts(tmp_path, pg_url):
    rs, servers = start_hosts(tmp_path, pg_url)
    try:
        yield rs, servers
    finally:
        stop_hosts(rs, servers)


@pytest.fixture
def small_hosts(tmp_path, pg_url):
    rs, servers = start_hosts(tmp_path, pg_url, {"WS_HISTORY_SIZE": 3})
    try:
        yield rs, servers
    finally:
        stop_hosts(rs, servers)


def ready(servers, n: int = 6) -> bool:
    return all(srv.get("/ready").status_code == 200 for srv in servers for _ in range(n))




def catchup_events(servers) -> float:
    return metric_total(servers, "fonana_rt_broker_catchup_events_total")


def scene(seed, servers):
    creator = seed.user(is_creator=True)
    fan = seed.user()
    post = seed.post(creator)
    clients = list(spread(servers, fan, WORKERS).values())
    for ws in clients:
        ws.subscribe({"type": "post", "postId": post})
    wait_until(lambda: ready(servers), 15, "/ready 200 on every worker")
    return fan, post, clients


def publish_numbered(servers, fan, post, count, start=0, retry_503=False) -> list[dict]:
    """`count` events through both hosts in turn (a union every fifth); returns the
    events that were accepted with 202, in publish order."""
    accepted = []
    n = start
    deadline = time.monotonic() + 30
    while len(accepted) < count:
        assert time.monotonic() < deadline, f"only {len(accepted)} of {count} publishes accepted"
        srv = servers[n % len(servers)]
        if n % 5 == 4:
            event = {"type": "custom", "n": n, "postId": post}
            body = {"event": event, "channel": {"type": "post", "postId": post}, "userId": fan}
        else:
            event = {"type": "post_liked", "postId": post, "userId": fan, "likesCount": n}
            body = {"event": event}
        n += 1
        r = srv.api("/api/events", body)
        if r.status_code == 503 and retry_503:
            continue                    # Redis not reachable yet: refused, so never published
        assert r.status_code == 202, r.text
        accepted.append(event)
    return accepted


def expect_exactly(clients, events):
    for i, ws in enumerate(clients):
        got = []
        for _ in events:
            try:
                got.append(ws.recv_json(timeout=10))
            except TimeoutError:
                raise AssertionError(f"client {i}: {len(got)} of {len(events)} events, "
                                     f"missing from {events[len(got)]!r}") from None
        assert got == events, f"client {i}: not exactly the accepted events in order"
        ws.barrier()                    # and nothing more (no duplicate)


def test_events_published_while_the_listeners_link_is_cut_are_caught_up(hosts, seed):
    rs, servers = hosts
    fan, post, clients = scene(seed, servers)
    expect_exactly(clients, publish_numbered(servers, fan, post, 3))
    before = catchup_events(servers)

    r = rs.client()
    direct = RedisPublisher(rs.url, servers[0].env["REDIS_PREFIX"])
    direct.post_liked(post, fan, 99)                      # loads the script: the next call is one round trip
    first = {"type": "post_liked", "postId": post, "userId": fan, "likesCount": 100}
    wait_until(lambda: len(r.client_list(_type="pubsub")) == 2 * len(servers), 15,
               "every worker's listener connected")
    killed = r.client_kill_filter(_type="pubsub")         # every worker's listener link, at once
    assert killed == 2 * WORKERS
    # Published a millisecond later, before any listener can be back (its back-off is
    # >= 50 ms): live pub/sub cannot bring this to the workers; only the history can.
    direct.publish(first)
    events = [first] + publish_numbered(servers, fan, post, 12, start=101)   # then both hosts
    expect_exactly(clients, [{**first, "likesCount": 99}] + events)
    assert catchup_events(servers) - before >= 1          # the path was taken (on every worker, normally)
    expect_exactly(clients, publish_numbered(servers, fan, post, 3, start=200))   # and is live
    direct.close()
    r.close()


def test_a_frozen_redis_loses_no_accepted_event(hosts, seed):
    """SIGSTOP for 20 s (longer than the listener's PING + PONG wait, so every link is
    given up and reconnects), SIGCONT, publish at once."""
    rs, servers = hosts
    fan, post, clients = scene(seed, servers)
    expect_exactly(clients, publish_numbered(servers, fan, post, 2))
    os.kill(rs.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(20)                  # the freeze itself is the scenario, not a wait for something
        for ws in clients:
            ws.ping()                   # connections stay up meanwhile
    finally:
        os.kill(rs.proc.pid, signal.SIGCONT)
    events = publish_numbered(servers, fan, post, 10, start=100)
    expect_exactly(clients, events)
    wait_until(lambda: ready(servers), 15, "/ready 200 after the freeze")
    expect_exactly(clients, publish_numbered(servers, fan, post, 3, start=200))


def test_redis_restart_without_its_data_replays_only_the_new_epoch(hosts, seed):
    rs, servers = hosts
    fan, post, clients = scene(seed, servers)
    expect_exactly(clients, publish_numbered(servers, fan, post, 4))      # history of the old epoch
    rs.restart()                                           # SIGKILL, no persistence: all data lost
    # Accepted as soon as Redis answers, mostly before the listeners are back: each
    # worker replays the new epoch from its start, and nothing of the old one.
    events = publish_numbered(servers, fan, post, 8, start=100, retry_503=True)
    expect_exactly(clients, events)
    wait_until(lambda: ready(servers), 15, "/ready 200 after the restart")
    expect_exactly(clients, publish_numbered(servers, fan, post, 3, start=200))


def test_missed_events_no_longer_in_history_are_not_replayed_and_live_ones_still_flow(small_hosts, seed):
    """WS_HISTORY_SIZE=3 and 6 events missed: all or nothing, so none is replayed (never a
    partial, out-of-order catch-up); the worker goes live and says what it lost."""
    rs, servers = small_hosts
    fan, post, clients = scene(seed, servers)
    expect_exactly(clients, publish_numbered(servers, fan, post, 2))
    r = rs.client()
    direct = RedisPublisher(rs.url, servers[0].env["REDIS_PREFIX"], history_size=3)
    direct.post_liked(post, fan, 99)                      # loads the script
    expect_exactly(clients, [{"type": "post_liked", "postId": post, "userId": fan, "likesCount": 99}])
    wait_until(lambda: len(r.client_list(_type="pubsub")) == 2 * len(servers), 15,
               "every worker's listener connected")
    assert r.client_kill_filter(_type="pubsub") == 2 * WORKERS
    for n in range(6):                                    # within a few ms: before any listener is back
        direct.post_liked(post, fan, 300 + n)
    wait_until(lambda: metric_total(servers, "fonana_rt_broker_catchup_failed_total", reason="trimmed")
               >= 2 * WORKERS, 15, "every worker giving up on the trimmed stream")
    wait_until(lambda: ready(servers), 15, "/ready 200 after the catch-up")
    after = publish_numbered(servers, fan, post, 4, start=500)
    expect_exactly(clients, after)                        # none of 300..305, then the live ones once
    assert any('"broker_catchup_lost"' in line and '"reason": "trimmed:1"' in line
               for srv in servers for line in srv.output().splitlines())
    direct.close()
    r.close()


def test_a_catch_up_whose_history_read_fails_does_not_go_live_past_the_missed_events(hosts, seed):
    """Redis answers the new link's SUBSCRIBEs but not the catch-up's history read (here:
    CLIENT PAUSE WRITE holds every script call past the command client's 2 s timeout,
    while SUBSCRIBE is answered): the worker must not go live with the missed events
    unread. Before, it went live and the next live event moved its marks past them: a
    connected client never got an event answered 202."""
    rs, servers = hosts
    fan, post, clients = scene(seed, servers)
    expect_exactly(clients, publish_numbered(servers, fan, post, 2))

    r = rs.client()
    direct = RedisPublisher(rs.url, servers[0].env["REDIS_PREFIX"])
    direct.post_liked(post, fan, 99)                      # loads the script: the next call is one round trip
    expect_exactly(clients, [{"type": "post_liked", "postId": post, "userId": fan, "likesCount": 99}])
    missed = {"type": "post_liked", "postId": post, "userId": fan, "likesCount": 100}
    wait_until(lambda: len(r.client_list(_type="pubsub")) == 2 * len(servers), 15,
               "every worker's listener connected")
    assert r.client_kill_filter(_type="pubsub") == 2 * WORKERS
    direct.publish(missed)                                # only the history can bring it now
    r.execute_command("CLIENT", "PAUSE", 4000, "WRITE")   # before any listener is back (>= 50 ms)
    wait_until(lambda: not ready(servers), 15, "/ready 503 while the listeners have no caught-up link")
    wait_until(lambda: ready(servers), 30, "/ready 200 once Redis answers scripts again")
    events = publish_numbered(servers, fan, post, 6, start=101)
    expect_exactly(clients, [missed] + events)
    direct.close()
    r.close()
