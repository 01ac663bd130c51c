"""A silently dead pub/sub link (issue 21; centrifugo#1189): the listener's connection
stays open and answers PING, publishes succeed, and nothing reaches the listener. The
worker must notice within seconds by itself, say so in /ready (`broker_stalled`) and
/metrics, rebuild its link, and hand on, once each, the events accepted meanwhile.

Real parts: a private redis-server behind a proxy that withholds the messages pushed to
the listeners' connections open at the moment of the stall (tests/support/stall_proxy.py),
one gunicorn with two gevent workers, a connection of one user on each worker.
"""
from __future__ import annotations

import secrets
import threading

import pytest

from support.hardening import metric_total
from support.redis_server import SPREAD_WORKER_CONNECTIONS, RedisServer, spread
from support.server import Server
from support.stall_proxy import StallProxy
from support.waiting import wait_until

pytestmark = pytest.mark.postgres

WORKERS = 2


def liked(post, fan, n):
    return {"type": "post_liked", "postId": post, "userId": fan, "likesCount": n}


def ready_reasons(srv, stop: threading.Event, out: list):
    while not stop.is_set():
        try:
            r = srv.get("/ready")
            out.append(r.json().get("reason") if r.status_code == 503 else "ok")
        except Exception as exc:            # the server is up throughout; keep sampling
            out.append(type(exc).__name__)


def test_a_silently_dead_link_is_noticed_reported_and_rebuilt_without_loss(tmp_path, pg_url, seed):
    rs = RedisServer(tmp_path / "redis").start()
    proxy = StallProxy("127.0.0.1", rs.port)
    srv = Server(tmp_path / "srv", name="stall", database_url=pg_url,
                 env={"REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
                      "REDIS_PREFIX": f"dl-{secrets.token_hex(3)}:", "WS_WORKERS": WORKERS,
                      "WS_WORKER_CONNECTIONS": SPREAD_WORKER_CONNECTIONS})
    srv.start()
    stop = threading.Event()
    try:
        creator, fan = seed.user(is_creator=True), seed.user()
        post = seed.post(creator)
        clients = list(spread([srv], fan, WORKERS).values())
        for ws in clients:
            ws.subscribe({"type": "post", "postId": post})
        wait_until(lambda: all(srv.get("/ready").status_code == 200 for _ in range(6)), 15, "ready")
        srv.publish({"event": liked(post, fan, 1)})
        for ws in clients:
            ws.expect_event(liked(post, fan, 1))

        assert proxy.stall() == WORKERS                 # both workers' listener links
        reasons: list = []
        sampler = threading.Thread(target=ready_reasons, args=(srv, stop, reasons), daemon=True)
        sampler.start()
        accepted = [liked(post, fan, n) for n in range(2, 5)]
        for event in accepted:
            srv.publish({"event": event})               # 202: publishing still works
        # Every worker notices by itself and rebuilds its link: no client, no operator.
        wait_until(lambda: metric_total(srv, "fonana_rt_broker_stalls_total") >= WORKERS, 20,
                   "both workers counted a stalled link")
        for i, ws in enumerate(clients):
            got = [ws.recv_json(timeout=15) for _ in accepted]
            assert got == accepted, f"client {i}: the events accepted during the stall, in order"
            ws.barrier()                                # each once
        assert proxy.dropped >= 1                       # the stall really withheld messages
        wait_until(lambda: all(srv.get("/ready").status_code == 200 for _ in range(6)), 15, "ready again")
        stop.set()
        sampler.join(20)
        assert "broker_stalled" in reasons, f"/ready never said so: {sorted(set(reasons))}"
        assert metric_total(srv, "fonana_rt_broker_stalled") == 0      # nobody stalled now
        srv.publish({"event": liked(post, fan, 5)})     # and live again
        for ws in clients:
            ws.expect_event(liked(post, fan, 5))
            ws.barrier()
    finally:
        stop.set()
        srv.stop()
        proxy.down()
        rs.stop()
