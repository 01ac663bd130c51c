"""Redis goes away and comes back (issue 3): a private redis-server that the test kills
and restarts on the same port, under one server with two gevent workers.

While Redis is down: /ready is 503, an HTTP publish is 503 `broker_unavailable` (the
notification endpoint still writes its row and returns it with the 503), clients stay
connected and may still connect and subscribe. After it is back: every worker's
listener reconnects and resubscribes by itself (including topics gained during the
outage), /ready is 200 again, events flow, and no worker died.
"""
from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from support.redis_server import SPREAD_WORKER_CONNECTIONS, RedisServer
from support.redis_server import spread as spread_over
from support.server import Server

pytestmark = pytest.mark.postgres

WORKERS = 2


def children(pid: int) -> set[int]:
    """The gunicorn master's live child processes (its workers)."""
    kids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.add(int(entry.name))
    return kids


def poll(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def spread(srv, user_id):
    """{worker pid: connection} over both workers."""
    return {pid: ws for (_, pid), ws in spread_over([srv], user_id, WORKERS).items()}


def all_ready(srv, want: int, n: int = 6) -> bool:
    """n /ready answers in a row with status `want` (they land on either worker)."""
    return all(srv.get("/ready").status_code == want for _ in range(n))


@pytest.fixture
def outage(tmp_path, pg_url):
    rs = RedisServer(tmp_path / "redis").start()
    srv = Server(tmp_path / "srv", name="outage-server", database_url=pg_url,
                 env={"REDIS_URL": rs.url, "REDIS_PREFIX": f"t-{secrets.token_hex(3)}:", "WS_WORKERS": WORKERS,
                      "WS_WORKER_CONNECTIONS": SPREAD_WORKER_CONNECTIONS})
    srv.start()
    try:
        yield rs, srv
    finally:
        srv.stop()
        rs.stop()


def test_redis_restart_workers_survive_and_delivery_resumes(outage, seed, record_property):
    rs, srv = outage
    creator = seed.user(is_creator=True)
    fan, late = seed.user(), seed.user()
    post = seed.post(creator)
    channel = {"type": "post", "postId": post}
    clients = spread(srv, fan)
    for ws in clients.values():
        ws.subscribe(channel)
    poll(lambda: all_ready(srv, 200), 10, "/ready 200 before the outage")
    workers = children(srv.proc.pid)
    assert set(clients) <= workers and len(workers) == WORKERS

    rs.stop()
    poll(lambda: all_ready(srv, 503), 10, "/ready 503 while Redis is down")
    r = srv.get("/ready")
    assert r.json() == {"error": "not_ready", "reason": "broker_unavailable"}
    event = {"type": "post_liked", "postId": post, "userId": creator, "likesCount": 1}
    for _ in range(4):                                   # whichever worker answers
        r = srv.api("/api/events", {"event": event})
        assert r.status_code == 503 and r.json() == {"error": "broker_unavailable"}, r.text
    r = srv.api("/api/notifications", {"userId": fan, "type": "SYSTEM_ANNOUNCEMENT", "title": "t", "message": "m"})
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "broker_unavailable" and body["notification"]["userId"] == fan
    assert seed.notification_row(body["notification"]["id"]) is not None     # the row was written
    # clients stay connected and usable; a newcomer connects and subscribes during the outage
    for ws in clients.values():
        ws.ping()
    newcomer = srv.connect(late)
    newcomer.subscribe(channel)

    rs.start()                                            # same port
    back = time.monotonic()
    # publish a numbered event every few ms until every client has received one
    pending = {**{("fan", pid): ws for pid, ws in clients.items()}, ("late", 0): newcomer}
    first_delivery: dict = {}
    n = 0
    deadline = back + 20
    while pending:
        assert time.monotonic() < deadline, f"no delivery after the restart to {sorted(pending)}"
        n += 1
        srv.api("/api/events", {"event": {**event, "likesCount": 1000 + n}})   # 202 or 503, both fine
        for name, ws in list(pending.items()):
            try:
                frame = ws.recv_json(timeout=0.02)
            except TimeoutError:
                continue
            assert frame["type"] == "post_liked", frame
            first_delivery[name] = time.monotonic() - back
            del pending[name]
    reconnect_seconds = max(first_delivery.values())
    record_property("reconnect_seconds", round(reconnect_seconds, 3))
    print(f"\nreconnect: Redis back -> first delivery on every worker in {reconnect_seconds:.3f}s "
          f"(per client: {', '.join(f'{v:.3f}' for v in sorted(first_delivery.values()))})")

    poll(lambda: all_ready(srv, 200), 10, "/ready 200 after the restart")
    # drain what the probing left in flight, then exactly one clean event each
    for ws in [*clients.values(), newcomer]:
        ws.send_json({"type": "ping"})
        while ws.recv_json()["type"] != "pong":
            pass
    final = {**event, "likesCount": 5}
    srv.publish({"event": final})
    for ws in [*clients.values(), newcomer]:
        ws.expect_event(final)
        ws.barrier()
    # no worker died: same children of the master, same pids answering new connections
    assert children(srv.proc.pid) == workers
    assert set(spread(srv, seed.user())) == set(clients)
    assert "Traceback" not in srv.output()
    rcli = rs.client()
    held = {c.decode() for c in rcli.pubsub_channels("*")}
    assert any(c.endswith(f"channel:post_{post}") for c in held)
    assert any(c.endswith(f"user:{late}") for c in held)


def test_redis_down_before_the_first_request_then_up(tmp_path, pg_url, seed):
    """A worker that starts while Redis is unreachable keeps serving HTTP and WebSocket
    clients, answers 503 on /ready, and once Redis is up listens for what they hold."""
    rs = RedisServer(tmp_path / "redis")          # not started yet
    srv = Server(tmp_path / "srv", name="cold-server", database_url=pg_url,
                 env={"REDIS_URL": rs.url, "WS_WORKERS": 1})
    srv.start()
    try:
        poll(lambda: all_ready(srv, 503, 2), 10, "/ready 503 without Redis")
        user = seed.user()
        ws = srv.connect(user)
        ws.subscribe({"type": "creator", "id": user})
        rs.start()
        poll(lambda: all_ready(srv, 200, 2), 15, "/ready 200 once Redis is up")
        event = {"type": "creator_updated", "creatorId": user, "data": {}}
        srv.publish({"event": event})
        ws.expect_event(event)
        ws.barrier()
        assert srv.proc.poll() is None
    finally:
        srv.stop()
        rs.stop()
