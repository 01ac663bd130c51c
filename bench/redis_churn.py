#!/usr/bin/env python3
"""The cost of per-topic SUBSCRIBE/UNSUBSCRIBE in a connect/disconnect storm.

With Redis, a worker holds only the topics it has local connections for: the first
connection of a user on a worker SUBSCRIBEs `user:<id>` (and waits for Redis's
acknowledgement before the welcome frame), the first subscriber of a channel
SUBSCRIBEs `channel:<key>` (acknowledged before `subscribed`), and the last one to
leave UNSUBSCRIBEs. This storm makes every one of those a first/last: each client is a
fresh user, subscribes to fresh channels, and disconnects. The same storm runs against
the in-process broker (no Redis) as the baseline.

    .venv/bin/python bench/redis_churn.py                      # defaults below
    .venv/bin/python bench/redis_churn.py --clients 4000 --concurrency 200 --channels 3

Starts its own redis-server (private port, no persistence) and gunicorn servers on the
embedded SQLite default (users are inserted into its file). Reports per configuration:
connections/s, handshake->welcome and subscribe->subscribed latency (p50/p99), server
worker CPU per connection, Redis commands and Redis CPU per SUBSCRIBE/UNSUBSCRIBE, and
that every topic was released afterwards (PUBSUB CHANNELS back to the workers' private
topics). One JSON line per configuration on stdout, then a table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt
import redis
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def cpu_seconds(pids) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])          # utime + stime
    return total / CLK_TCK


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class RedisProc:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.client = redis.Redis.from_url(self.url, protocol=2)
        wait_for(self.client.ping, 10, "redis-server")

    def stats(self) -> dict:
        cmd = self.client.info("commandstats")
        cpu = self.client.info("cpu")
        return {"subscribe": cmd.get("cmdstat_subscribe", {}).get("calls", 0),
                "subscribe_usec": cmd.get("cmdstat_subscribe", {}).get("usec", 0),
                "unsubscribe": cmd.get("cmdstat_unsubscribe", {}).get("calls", 0),
                "unsubscribe_usec": cmd.get("cmdstat_unsubscribe", {}).get("usec", 0),
                "cpu": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])}

    def stop(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


class ServerProc:
    def __init__(self, workdir: Path, redis_url: str | None, workers: int, prefix: str, *,
                 tree: Path = REPO, extra_env: dict | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.secret = secrets.token_urlsafe(32)
        self.data_dir = workdir / "data"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("WS_", "REDIS_", "DATABASE_", "JWT_", "NEXTAUTH_"))}
        env.update({
            "WS_HOST": "127.0.0.1", "WS_PORT": str(self.port), "WS_WORKERS": str(workers),
            "JWT_SECRET": self.secret, "WS_API_SECRET": secrets.token_urlsafe(32),
            "DATA_DIR": str(self.data_dir), "LOG_DIR": str(workdir / "logs"),
            "WS_HANDSHAKES_PER_IP_PER_SEC": "0", "WS_MAX_CONNECTIONS_PER_USER": "100000",
            "REDIS_PREFIX": prefix, "PYTHONUNBUFFERED": "1",
        })
        if redis_url:
            env["REDIS_URL"] = redis_url
        env.update(extra_env or {})
        gunicorn = Path(sys.executable).parent / "gunicorn"
        self.log = open(workdir / "server.log", "wb")
        self.proc = subprocess.Popen([str(gunicorn), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=tree, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        import urllib.request

        def healthy():
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status == 200
        wait_for(healthy, 30, "gunicorn /health")
        wait_for(lambda: len(children(self.proc.pid)) == workers, 10, "workers")
        self.workers = children(self.proc.pid)

    def add_users(self, ids):
        db = sqlite3.connect(self.data_dir / "fonana.sqlite3", timeout=30)
        now = time.strftime("%Y-%m-%d %H:%M:%S.000", time.gmtime())
        db.executemany('INSERT INTO "users" ("id","wallet","updatedAt","createdAt") VALUES (?,?,?,?)',
                       [(i, "w-" + i, now, now) for i in ids])
        db.commit()
        db.close()

    def token(self, user_id: str) -> str:
        return jwt.encode({"userId": user_id, "exp": int(time.time()) + 3600}, self.secret, algorithm="HS256")

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.log.close()


async def client(url, token, channels, lat_connect, lat_subscribe):
    t0 = time.perf_counter()
    async with connect(url + "?token=" + token, compression=None, ping_interval=None, open_timeout=30,
                       close_timeout=5) as ws:
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "connected", welcome
        lat_connect.append(time.perf_counter() - t0)
        for key in channels:
            t1 = time.perf_counter()
            await ws.send(json.dumps({"type": "subscribe", "channel": {"type": "creator", "id": key}}))
            reply = json.loads(await ws.recv())
            assert reply["type"] == "subscribed", reply
            lat_subscribe.append(time.perf_counter() - t1)


async def probe(url, token, n):
    """One quiet connection, n sequential subscribes to fresh channels: what one first
    subscriber pays when nothing else is going on (the Redis round trip, or nothing)."""
    lat = []
    async with connect(url + "?token=" + token, compression=None, ping_interval=None) as ws:
        await ws.recv()
        for _ in range(n):
            t1 = time.perf_counter()
            await ws.send(json.dumps({"type": "subscribe",
                                      "channel": {"type": "creator", "id": f"probe-{secrets.token_hex(6)}"}}))
            await ws.recv()
            lat.append(time.perf_counter() - t1)
    return lat


async def storm(url, tokens, channels_per_client, concurrency, channel_pool=None):
    lat_connect, lat_subscribe = [], []
    gate = asyncio.Semaphore(concurrency)

    async def one(n, token):
        async with gate:
            if channel_pool:        # topics that stay held: no SUBSCRIBE/UNSUBSCRIBE
                chans = [channel_pool[(n + k) % len(channel_pool)] for k in range(channels_per_client)]
            else:                   # every channel fresh: a SUBSCRIBE and an UNSUBSCRIBE each
                chans = [f"churn-{secrets.token_hex(6)}" for _ in range(channels_per_client)]
            await client(url, token, chans, lat_connect, lat_subscribe)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(n, t) for n, t in enumerate(tokens)))
    return time.perf_counter() - t0, lat_connect, lat_subscribe


def run_config(name, workdir, rds, workers, args, held=False):
    """held=False: every connection a fresh user, every channel fresh (all churn).
    held=True: 20 users and 20 channels shared by all connections, so with 100 in
    flight each worker keeps holding them (the same storm with almost no churn)."""
    prefix = f"churn-{secrets.token_hex(3)}:"
    srv = ServerProc(workdir / name, rds.url if rds else None, workers, prefix)
    try:
        url = f"ws://127.0.0.1:{srv.port}/ws"
        users = [f"churn-{name}-{i}" for i in range(20 if held else args.clients + args.warmup)]
        srv.add_users(users)
        tokens = [srv.token(u) for u in users]
        if held:
            tokens = [tokens[i % len(tokens)] for i in range(args.clients + args.warmup)]
        pool = [f"held-{i}" for i in range(20)] if held else None
        asyncio.run(storm(url, tokens[:args.warmup], args.channels, args.concurrency, pool))      # warm up
        if rds and not held:
            wait_for(lambda: len(rds.client.pubsub_channels(prefix + "*")) == workers, 15, "warm-up topics released")
            before = rds.stats()
        cpu_before, wall_cpu_before = cpu_seconds(srv.workers), time.process_time()
        wall, lat_c, lat_s = asyncio.run(storm(url, tokens[args.warmup:], args.channels, args.concurrency, pool))
        released = None
        if rds and not held:
            t_end = time.monotonic()
            wait_for(lambda: len(rds.client.pubsub_channels(prefix + "*")) == workers, 30, "all topics released")
            released = time.monotonic() - t_end
        worker_cpu = cpu_seconds(srv.workers) - cpu_before
        client_cpu = time.process_time() - wall_cpu_before
        out = {"config": name, "workers": workers, "clients": args.clients, "channels_per_client": args.channels,
               "concurrency": args.concurrency, "wall_s": round(wall, 3),
               "connections_per_s": round(args.clients / wall, 1),
               "subscribes_per_s": round(args.clients * args.channels / wall, 1),
               "connect_ms_p50": round(pct(lat_c, 50) * 1e3, 2), "connect_ms_p99": round(pct(lat_c, 99) * 1e3, 2),
               "subscribe_ms_p50": round(pct(lat_s, 50) * 1e3, 2),
               "subscribe_ms_p99": round(pct(lat_s, 99) * 1e3, 2),
               "worker_cpu_ms_per_connection": round(worker_cpu / args.clients * 1e3, 3),
               "bench_client_cpu_s": round(client_cpu, 2),
               "workers_alive": len(children(srv.proc.pid)) == workers and set(children(srv.proc.pid)) == set(srv.workers)}
        if workers == 1:
            quiet = asyncio.run(probe(url, tokens[0], 300))
            out["quiet_fresh_subscribe_ms_p50"] = round(pct(quiet, 50) * 1e3, 3)
            out["quiet_fresh_subscribe_ms_p99"] = round(pct(quiet, 99) * 1e3, 3)
        if rds and not held:
            after = rds.stats()
            topics = args.clients * (1 + args.channels)
            subs = after["subscribe"] - before["subscribe"]
            unsubs = after["unsubscribe"] - before["unsubscribe"]
            out.update({
                "topics_churned": topics,
                "redis_subscribe_cmds": subs, "redis_unsubscribe_cmds": unsubs,
                "redis_usec_per_subscribe_cmd": round((after["subscribe_usec"] - before["subscribe_usec"]) / max(subs, 1), 2),
                "redis_usec_per_unsubscribe_cmd": round((after["unsubscribe_usec"] - before["unsubscribe_usec"]) / max(unsubs, 1), 2),
                "redis_cpu_us_per_topic": round((after["cpu"] - before["cpu"]) / topics * 1e6, 2),
                "released_all_topics_after_s": round(released, 3),
            })
        return out
    finally:
        srv.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=2000, help="connections in the measured storm (each a fresh user)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--channels", type=int, default=2, help="fresh channels each connection subscribes to")
    ap.add_argument("--concurrency", type=int, default=100, help="connections in flight at once")
    ap.add_argument("--workers", type=int, default=2, help="gevent workers of the Redis configuration")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fonana-churn-"))
    rds = RedisProc(workdir)
    rows = []
    try:
        for name, use_redis, workers, held in (
                ("memory-1w", False, 1, False), ("redis-1w", True, 1, False),
                (f"redis-{args.workers}w", True, args.workers, False),
                (f"redis-{args.workers}w-held", True, args.workers, True)):
            row = run_config(name, workdir, rds if use_redis else None, workers, args, held)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        rds.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    cols = ["config", "quiet_fresh_subscribe_ms_p50", "connections_per_s", "connect_ms_p50", "connect_ms_p99", "subscribe_ms_p50",
            "subscribe_ms_p99", "worker_cpu_ms_per_connection", "redis_cpu_us_per_topic",
            "released_all_topics_after_s"]
    print("\n" + " | ".join(cols))
    for row in rows:
        print(" | ".join(str(row.get(c, "-")) for c in cols))


if __name__ == "__main__":
    main()
