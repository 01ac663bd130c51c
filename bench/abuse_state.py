#!/usr/bin/env python3
"""State one user can make the server and Redis hold (issue 18, items 3 and 4).

    .venv/bin/python bench/abuse_state.py                              # this tree
    .venv/bin/python bench/abuse_state.py --tree /path/to/a/checkout   # another one (e.g. 2a9aaaf)

Two parts, each against a private redis-server (no persistence) and one gevent worker of
the tree's gunicorn with REDIS_URL, both pinned to core 0; this generator runs on core 1.

ghosts: `--conns` connections of one user each subscribe to `--ghosts` creator ids nobody
  publishes to, then close. Reported: keys under the prefix, those whose TTL is over 60 s
  (or none), their MEMORY USAGE summed, and Redis `used_memory` grown (client buffers
  included), right after the last close.
drops: one user drops (TCP abort, no close frame: resume marks are written) `--drops`
  connections, each subscribed to `--channels` new creator ids; another user drops one
  such connection. Then `--connects` sequential connects of each (handshake -> welcome;
  both resume their user stream, closed by the client so they write nothing), while a
  bystander on the same worker sends JSON pings back to back: connect medians, the
  bystander's median and worst round trip during each, the first user's marks hash
  (fields, MEMORY USAGE).

WS_RATE_PER_SEC / _BURST are raised so the load is quick (an abuser spreads it over more
connections instead); WS_HANDSHAKES_PER_IP_PER_SEC=0 and a high per-user connection cap
for the same reason. One JSON line per part on stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from redis_churn import REPO, RedisProc, ServerProc, children, pct  # noqa: E402

FAST = {"WS_RATE_PER_SEC": "100000", "WS_RATE_BURST": "100000", "WS_MAX_SUBSCRIPTIONS": "200"}


def pin(pids, core: int):
    for pid in pids:
        try:
            os.sched_setaffinity(pid, {core})
        except OSError:
            pass


def start(tree: Path, workdir: Path, name: str, extra: dict):
    (workdir / f"{name}-redis").mkdir(parents=True, exist_ok=True)
    rds = RedisProc(workdir / f"{name}-redis")
    prefix = f"abuse-{secrets.token_hex(3)}:"
    srv = ServerProc(workdir / name, rds.url, 1, prefix, tree=tree, extra_env={**FAST, **extra})
    pin([rds.proc.pid, srv.proc.pid, *children(srv.proc.pid)], 0)
    return rds, srv, prefix


async def subscribe_all(ws, ids):
    for id_ in ids:
        await ws.send(json.dumps({"type": "subscribe", "channel": {"type": "creator", "id": id_}}))
    for _ in ids:
        while json.loads(await ws.recv())["type"] != "subscribed":
            pass


def url(srv, user) -> str:
    return f"ws://127.0.0.1:{srv.port}/ws?token={srv.token(user)}"


async def ghosts_part(srv, rds, prefix, user, conns, ghosts):
    before = rds.client.info("memory")["used_memory"]

    async def one():
        async with connect(url(srv, user), compression=None, ping_interval=None, open_timeout=30) as ws:
            await ws.recv()
            await subscribe_all(ws, [f"g{secrets.token_hex(6)}" for _ in range(ghosts)])

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(conns)))
    took = time.perf_counter() - t0
    keys = list(rds.client.scan_iter(match=prefix + "*", count=1000))
    ttls = [rds.client.ttl(k) for k in keys]
    return {"part": "ghosts", "subscribes": conns * ghosts, "seconds": round(took, 2),
            "keys": len(keys), "keys_ttl_over_60s": sum(1 for t in ttls if t == -1 or t > 60),
            "max_ttl": max(ttls, default=None),
            "keys_bytes": sum(rds.client.memory_usage(k) or 0 for k in keys),
            "used_memory_grown_bytes": rds.client.info("memory")["used_memory"] - before}


async def drop_one(srv, user, channels):
    ws = await connect(url(srv, user), compression=None, ping_interval=None, open_timeout=30)
    await ws.recv()
    await subscribe_all(ws, [f"d{secrets.token_hex(6)}" for _ in range(channels)])
    ws.transport.abort()                    # the network goes: no close frame, marks are kept


async def bystander(srv, user, stop: asyncio.Event, rtts: list):
    async with connect(url(srv, user), compression=None, ping_interval=None) as ws:
        await ws.recv()
        while not stop.is_set():
            t0 = time.perf_counter()
            await ws.send('{"type":"ping"}')
            while json.loads(await ws.recv())["type"] != "pong":
                pass
            rtts.append(time.perf_counter() - t0)
            await asyncio.sleep(0.002)


async def connects(srv, user, n, rtts) -> tuple[list, list]:
    """n sequential connects of `user` (closed by the client: no marks written); per
    connect its time and the bystander's worst round trip meanwhile."""
    times, worst = [], []
    for _ in range(n):
        mark = len(rtts)
        t0 = time.perf_counter()
        async with connect(url(srv, user), compression=None, ping_interval=None) as ws:
            await ws.recv()
            times.append(time.perf_counter() - t0)
        await asyncio.sleep(0.01)
        worst.append(max(rtts[mark:], default=0.0))
    return times, worst


async def drops_part(srv, rds, prefix, user, once, watcher, drops, channels, n):
    t0 = time.perf_counter()
    for start_ in range(0, drops, 10):
        await asyncio.gather(*(drop_one(srv, user, channels) for _ in range(min(10, drops - start_))))
    took = time.perf_counter() - t0
    await drop_one(srv, once, channels)     # anyone who dropped once: the same resume work
    await asyncio.sleep(1.0)                # the last drops noticed by the server
    # the key and its type changed with the bound (a hash `resume:{u}`, then `marks:{u}`)
    key = next(iter(rds.client.scan_iter(match=f"{prefix}*:{{{user}}}")), None)
    kind = rds.client.type(key).decode() if key else None
    fields = (rds.client.hlen(key) if kind == "hash" else
              len(rds.client.get(key).split(b"\n")) if kind == "string" else 0)
    size = (rds.client.memory_usage(key) or 0) if key else 0
    stop, rtts = asyncio.Event(), []
    watch = asyncio.create_task(bystander(srv, watcher, stop, rtts))
    await asyncio.sleep(0.5)
    quiet = list(rtts)
    heavy_t, heavy_worst = await connects(srv, user, n, rtts)
    once_t, once_worst = await connects(srv, once, n, rtts)
    stop.set()
    await watch
    ms = lambda v: round(v * 1000, 2)       # noqa: E731
    return {"part": "drops", "drops": drops, "channels_each": channels, "seconds": round(took, 2),
            "marks_fields": fields, "marks_bytes": size,
            "connect_ms_heavy_median": ms(statistics.median(heavy_t)),
            "connect_ms_once_median": ms(statistics.median(once_t)),
            "bystander_ms_quiet_median": ms(statistics.median(quiet)) if quiet else None,
            "bystander_ms_worst_heavy_median": ms(statistics.median(heavy_worst)),
            "bystander_ms_worst_heavy_max": ms(max(heavy_worst)),
            "bystander_ms_worst_once_median": ms(statistics.median(once_worst)),
            "bystander_ms_p99_all": ms(pct(rtts, 99))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, default=REPO, help="checkout whose server runs (default: this one)")
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--ghosts", type=int, default=100, help="ghost subscribes per connection")
    ap.add_argument("--drops", type=int, default=400)
    ap.add_argument("--channels", type=int, default=50, help="new channels per dropped connection")
    ap.add_argument("--connects", type=int, default=30)
    ap.add_argument("--only", choices=["ghosts", "drops"])
    args = ap.parse_args()
    pin([os.getpid()], 1)
    workdir = Path(tempfile.mkdtemp(prefix="abuse-state-"))
    for part in ("ghosts", "drops"):
        if args.only and part != args.only:
            continue
        rds, srv, prefix = start(args.tree.resolve(), workdir, part, {})
        try:
            users = [f"abuse{secrets.token_hex(4)}" for _ in range(3)]
            srv.add_users(users)
            if part == "ghosts":
                out = asyncio.run(ghosts_part(srv, rds, prefix, users[0], args.conns, args.ghosts))
            else:
                out = asyncio.run(drops_part(srv, rds, prefix, users[0], users[1], users[2],
                                             args.drops, args.channels, args.connects))
            out["tree"] = str(args.tree)
            print(json.dumps(out), flush=True)
        finally:
            srv.stop()
            rds.stop()


if __name__ == "__main__":
    main()
