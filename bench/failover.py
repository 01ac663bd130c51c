#!/usr/bin/env python3
"""Redis failover under publishing (issue 21), Sentinel or one Cluster shard: how long
from a master's SIGKILL until publishing is accepted again and until every client has
caught up, how many publishes were refused (503) meanwhile, and how many accepted events
were lost silently (must be 0).

    .venv/bin/python bench/failover.py                 # Sentinel, 3 runs, medians
    .venv/bin/python bench/failover.py --runs 5 --rate 20
    .venv/bin/python bench/failover.py --topology cluster

Each run: a private Sentinel set (master, replica, three sentinels; down-after 1000 ms,
tests/support/redis_sentinel.py) or a private Cluster (three masters with a replica each,
cluster-node-timeout 1000 ms, tests/support/redis_cluster.py; the master killed is the one
serving the channel's slot; a second channel on another shard is published alike, and
its clients' longest pause in delivery around the kill is reported), a fresh PostgreSQL database, two gunicorn instances
("hosts") x two gevent workers pinned to core 0 (`taskset -c 0`), this process (the
publisher and the clients) on core 1. Two hosts publish over HTTP at --rate events/s in
turn; a v2 and a legacy client per host read every frame. After --before seconds the
master is SIGKILLed; publishing goes on until --after events were accepted by the new
master. Then a v2 client that left before the kill recovers with `since`.

- first accepted: SIGKILL -> the first 202 after it;
- all caught up: SIGKILL -> the moment the last live client holds every event accepted
  after the kill up to the first one (what the workers' catch-up from history gives);
- refused: 503 answers meanwhile (nothing was published for them);
- lost silently: events accepted after the kill that a live client never got, plus events a
  `recovered: true` replay lacked; `recovered: false` is the honest answer, not a loss.
One JSON line per run, then the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from support.db import Seed, TestDatabase  # noqa: E402
from redis.crc import key_slot  # noqa: E402
from support.redis_cluster import RedisCluster  # noqa: E402
from support.redis_sentinel import SentinelSet  # noqa: E402
from support.server import Server, gunicorn_cmd  # noqa: E402
from support.v2 import subscribe_v2, v2  # noqa: E402

SERVER_CPU, GEN_CPU = 0, 1


def tick_of(frame):
    data = frame["data"] if frame.get("type") == "event" else frame
    return data.get("n") if data.get("type") == "tick" else None


class Reader(threading.Thread):
    def __init__(self, ws):
        super().__init__(daemon=True)
        self.ws, self.got, self.stop = ws, {}, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                frame = self.ws.recv_json(timeout=0.5)
            except TimeoutError:
                continue
            except Exception:
                return
            n = tick_of(frame)
            if n is not None:
                self.got.setdefault(n, time.monotonic())


def one_run(args, workdir: Path) -> dict:
    if args.topology == "cluster":
        sentinels = RedisCluster(workdir / "cluster").start()
    else:
        sentinels = SentinelSet(workdir / "sentinel").start()
    db = TestDatabase().create()
    seed = Seed(db.url)
    servers = []
    readers = []
    try:
        prefix = f"fo-{secrets.token_hex(3)}:"
        for name in ("fo-host-a", "fo-host-b"):
            srv = Server(workdir / name, name=name, database_url=db.url,
                         command=["taskset", "-c", str(SERVER_CPU), *gunicorn_cmd()],
                         env={"REDIS_URL": sentinels.url, "REDIS_PREFIX": prefix,
                              "WS_WORKERS": 2})
            servers.append(srv.start())
        creator, fan = seed.user(is_creator=True), seed.user()
        post = seed.post(creator)
        channel = {"type": "post", "postId": post}
        calm, calm_readers, calm_refused = None, [], 0
        if args.topology == "cluster":          # a channel on another shard, published alike
            def master(p):
                return sentinels.master_of(key_slot(f"{prefix}{{post_{p}}}:m".encode()))
            calm_post = next(p for p in (seed.post(creator) for _ in range(100)) if master(p) is not master(post))
            calm = {"type": "post", "postId": calm_post}
        deadline = time.monotonic() + 20
        while not all(s.get("/ready").status_code == 200 for s in servers for _ in range(4)):
            assert time.monotonic() < deadline, "servers not ready"
        for srv in servers:
            ws = v2(srv, fan)
            subscribe_v2(ws, channel)
            legacy = srv.connect(fan)
            legacy.subscribe(channel)
            readers += [Reader(ws), Reader(legacy)]
            if calm is not None:
                ws = v2(srv, fan)
                subscribe_v2(ws, calm)
                calm_readers.append(Reader(ws))
        away = v2(servers[0], fan)
        subscribe_v2(away, channel)
        for r in readers + calm_readers:
            r.start()

        accepted, answered_at, refused = [], {}, 0
        killed = first_after = None
        started = time.monotonic()
        n = 0
        while n < args.max_events and time.monotonic() - started < args.max_seconds:
            now = time.monotonic()
            if killed is None and now - started >= args.before:
                frames = []
                away.send_json({"type": "ping"})
                while (f := away.recv_json(timeout=10)).get("type") != "pong":
                    frames.append(f)
                last = [f for f in frames if f.get("type") == "event"][-1]
                away_at, away_n = {"epoch": last["epoch"], "offset": last["offset"]}, last["data"]["n"]
                away.close()
                if args.topology == "cluster":
                    old = sentinels.master_of(key_slot(f"{prefix}{{post_{post}}}:m".encode()))
                    killed = time.monotonic()
                    old.kill()                              # SIGKILL
                else:
                    old = sentinels.master()
                    killed = time.monotonic()
                    old.stop()                              # SIGKILL
            srv = servers[n % 2]
            r = srv.api("/api/events", {"event": {"type": "tick", "n": n}, "channel": channel})
            if r.status_code == 202:
                accepted.append(n)
                answered_at[n] = time.monotonic()
                if killed is not None and first_after is None and answered_at[n] > killed:
                    first_after = n
            else:
                assert r.status_code == 503, r.text
                if killed is not None:
                    refused += 1
            if calm is not None:
                r = srv.api("/api/events", {"event": {"type": "tick", "n": n}, "channel": calm})
                if r.status_code != 202:
                    assert r.status_code == 503, r.text
                    calm_refused += 1
            n += 1
            if first_after is not None and sum(1 for a in accepted if a >= first_after) >= args.after:
                break
            time.sleep(max(0.0, started + n / args.rate - time.monotonic()))   # the publishing rate
        assert first_after is not None, "no publish accepted after the kill"
        after = [a for a in accepted if a >= first_after]
        deadline = time.monotonic() + 30
        while any(set(after) - set(r.got) for r in readers) and time.monotonic() < deadline:
            time.sleep(0.05)
        for r in readers + calm_readers:
            r.stop.set()
        lost = sum(len(set(after) - set(r.got)) for r in readers)
        caught_up = max(r.got[first_after] for r in readers if first_after in r.got)

        back = v2(servers[1], fan)
        data = subscribe_v2(back, channel, since=away_at)
        frames = []
        back.send_json({"type": "ping"})
        while (f := back.recv_json(timeout=10)).get("type") != "pong":
            frames.append(f)
        if data["recovered"]:
            replayed = {tick_of(f) for f in frames}
            lost += len({a for a in accepted if a > away_n} - replayed)
        back.close()
        extra = {}
        if calm is not None:
            # the other shard's channel: the longest pause in its delivery around the kill
            gaps = []
            for r in calm_readers:
                times = sorted(t for t in r.got.values() if killed - 1 <= t <= answered_at[first_after] + 1)
                gaps += [b - a for a, b in zip(times, times[1:])]
            extra = {"other_shard_refused_503": calm_refused,
                     "other_shard_longest_pause_s": round(max(gaps, default=0.0), 3)}
        return {**extra, "first_accepted_s": round(answered_at[first_after] - killed, 3),
                "all_caught_up_s": round(caught_up - killed, 3),
                "refused_503": refused, "lost_silently": lost,
                "accepted": len(accepted), "recovered_across": data["recovered"]}
    finally:
        for srv in servers:
            srv.stop()
        seed.close()
        db.drop()
        sentinels.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--topology", choices=("sentinel", "cluster"), default="sentinel")
    p.add_argument("--rate", type=float, default=20.0, help="publishes per second over both hosts")
    p.add_argument("--before", type=float, default=3.0, help="seconds of publishing before the kill")
    p.add_argument("--after", type=int, default=40, help="events the new master accepts before the end")
    p.add_argument("--max-events", type=int, default=2000)
    p.add_argument("--max-seconds", type=float, default=90.0)
    args = p.parse_args()
    os.sched_setaffinity(0, {GEN_CPU})
    results = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="fonana-failover-") as tmp:
            result = one_run(args, Path(tmp))
        print(json.dumps(result), flush=True)
        results.append(result)
    print("median over", len(results), "runs:", json.dumps({
        key: statistics.median(r[key] for r in results)
        for key in ("first_accepted_s", "all_caught_up_s", "refused_503", "lost_silently",
                    "other_shard_refused_503", "other_shard_longest_pause_s") if key in results[0]}))


if __name__ == "__main__":
    main()
