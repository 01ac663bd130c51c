"""Reconnect storm of protocol-v2 clients that each recover missed events (issue 9).

    .venv/bin/python bench/recovery_storm.py [--clients 5000] [--missed 20] [--channels 100] [--redis]

Our server (one gevent worker, embedded store, in-process history) on core 0, this
client (Python asyncio + `websockets`, negotiating `fonana.v2`) on core 1. Steps:

1. `--clients` clients connect and subscribe to one of `--channels` creator channels;
   each keeps the (epoch, offset) of its `subscribed` reply; then all disconnect.
2. `--missed` events are published to every channel (one list POST per channel).
3. storm A: every client reconnects (200 in flight) and subscribes with `since`; it is
   done when `subscribed` says `recovered: true` and all missed events arrived, each once
   and in order (checked: contiguous offsets).
4. storm B, the baseline: the same reconnects subscribing without `since`.

Prints the time to all recovered, the server's CPU per client in each storm and the
difference (what a recovery costs beyond a reconnect), and the OTHER LOAD on the
server's core. Every step has a deadline; everything talks to 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import types
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as benchrun  # noqa: E402  (the runner's server, tokens, users and /proc helpers)

V2 = "fonana.v2"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])          # utime + stime
        except OSError:
            pass
    return total / TICK


def publish(port, api_key, channel, events):
    import urllib.request
    body = json.dumps({"events": events, "channel": channel}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/events", data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {api_key}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 202, r.status


async def one_client(url, channel, since, missed, deadline):
    from websockets.asyncio.client import connect
    async with connect(url, subprotocols=[V2], open_timeout=30, ping_interval=None,
                       compression=None, max_size=None) as ws:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), deadline))
        assert welcome["type"] == "connected", welcome
        msg = {"type": "subscribe", "channel": channel}
        if since is not None:
            msg["since"] = since
        await ws.send(json.dumps(msg))
        reply = json.loads(await asyncio.wait_for(ws.recv(), deadline))
        assert reply["type"] == "subscribed", reply
        data = reply["data"]
        if since is None:
            return {"epoch": data["epoch"], "offset": data["offset"]}
        assert data["recovered"] is True, data
        offsets = []
        while len(offsets) < missed:
            frame = json.loads(await asyncio.wait_for(ws.recv(), deadline))
            assert frame["type"] == "event", frame
            offsets.append(frame["offset"])
        assert offsets == list(range(since["offset"] + 1, since["offset"] + missed + 1)), offsets
        return None


async def storm(urls, channels, sinces, missed, inflight, deadline):
    sem = asyncio.Semaphore(inflight)
    results = [None] * len(urls)

    async def run(i):
        async with sem:
            results[i] = await one_client(urls[i], channels[i], sinces[i] if sinces else None, missed, deadline)

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(run(i) for i in range(len(urls)))), deadline)
    return time.perf_counter() - started, results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=5000)
    ap.add_argument("--missed", type=int, default=20)
    ap.add_argument("--channels", type=int, default=100)
    ap.add_argument("--inflight", type=int, default=200)
    ap.add_argument("--deadline", type=float, default=300.0, help="seconds for each storm")
    ap.add_argument("--redis", action="store_true",
                    help="REDIS_URL set: the history in a private redis-server, pinned to the server's "
                         "core and counted in its CPU")
    args = ap.parse_args()
    os.sched_setaffinity(0, {benchrun.GEN_CPU})
    benchrun.raise_nofile()
    work = Path(benchrun.tempfile.mkdtemp(prefix="fonana-recovery-"))
    ctx = types.SimpleNamespace(
        jwt_secret=benchrun.secrets.token_urlsafe(32), api_key=benchrun.secrets.token_urlsafe(24),
        work=work, instances=0, data_dir=work / "data", nice=0, server_src=benchrun.ROOT,
        extra_server_pids=[], args=types.SimpleNamespace(quiet_wait=10), quiet_budget=30.0)
    ctx.data_dir.mkdir()
    tokens = work / "tokens.txt"
    benchrun.mint_tokens(tokens, ctx.jwt_secret, 0, args.clients)
    seed = benchrun.Server("ours", ctx, label="seed").start()
    seed.stop()
    benchrun.add_bench_users(ctx.data_dir / "fonana.sqlite3", args.clients)
    redis, redis_url = None, None
    if args.redis:
        redis = benchrun.Redis(ctx)
        redis_url = redis.start()
        if not redis_url:
            sys.exit("no redis-server could be started")
        ctx.extra_server_pids = [redis.proc.pid]
    srv = benchrun.Server("ours", ctx, redis_url=redis_url).start()
    if redis_url:
        for _ in range(60):
            if benchrun.http_get(srv.port, "/ready", 2.0)[0] == 200:
                break
            time.sleep(0.5)
    print(f"history: {'Redis (' + redis_url + ')' if redis_url else 'in process'}")
    try:
        lines = tokens.read_text().split("\n")
        urls = [f"ws://127.0.0.1:{srv.port}/ws?token={line.split(' ', 1)[1]}" for line in lines if line]
        channels = [{"type": "creator", "id": f"storm{i % args.channels}"} for i in range(len(urls))]
        took, positions = asyncio.run(storm(urls, channels, None, 0, args.inflight, args.deadline))
        print(f"{len(urls)} v2 clients connected and subscribed in {took:.1f} s; all disconnect")
        for c in range(args.channels):
            publish(srv.port, ctx.api_key, f"creator_storm{c}",
                    [{"type": "creator_updated", "creatorId": f"storm{c}", "data": {"n": n}}
                     for n in range(args.missed)])
        print(f"published {args.missed} events to each of {args.channels} channels")
        figures = {}
        for name, sinces, missed in (("recover", positions, args.missed), ("baseline", None, 0)):
            load = benchrun.wait_quiet(ctx)
            pids = srv.refresh_pids()
            cpu0 = cpu_seconds(pids)
            took, _ = asyncio.run(storm(urls, channels, sinces, missed, args.inflight, args.deadline))
            cpu = cpu_seconds(pids) - cpu0
            other = load.get(f"cpu{benchrun.SERVER_CPU}", 0)
            figures[name] = (took, cpu)
            print(f"storm {name:8s}: {len(urls)} clients in {took:6.2f} s ({len(urls) / took:7.0f}/s), "
                  f"server CPU {cpu:6.2f} s = {cpu / len(urls) * 1e3:6.3f} ms per client; "
                  f"OTHER LOAD on the server's core before it {other:.0%}")
        (rt, rc), (_, bc) = figures["recover"], figures["baseline"]
        print(f"recovery of {args.missed} missed events: +{(rc - bc) / len(urls) * 1e3:.3f} ms server CPU "
              f"per client beyond a plain reconnect+subscribe; all {len(urls) * args.missed:,} missed "
              f"events delivered, contiguous, none twice; time to all recovered {rt:.2f} s")
    finally:
        srv.stop()
        if redis:
            redis.stop()
        benchrun.shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
