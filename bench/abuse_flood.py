#!/usr/bin/env python3
"""bench/abuse_flood.py: how long a bystander waits while one client floods the worker (issue 18.1).

    .venv/bin/python bench/abuse_flood.py [--seconds 8] [--reps 3] [--tree DIR]

One gunicorn (one gevent worker, embedded store, in-process broker, default limits,
pinned to core 0) serves two clients from this process (pinned to core 1): a flooder
writing one frame over and over as fast as it can for `--seconds` (and reading all it
gets back: tests/support/flood.py), and a bystander connected before, sending a JSON
ping and waiting for its pong, up to 10 a second (its own rate limit is 20/s), for as
long as the flood lasts. Four floods: JSON `{"type":"ping"}` text frames, empty
WebSocket ping frames (opcode 9), empty pong frames (opcode 10), one-byte binary messages.

Reported per flood, medians over the repetitions: the bystander's worst and median
round trip while the flood ran, how the flooder's connection ended (close code) and
after how long, and the bytes it wrote. Then what giving way costs a well-behaved
client: worker CPU per JSON ping round trip of one client (rate limits raised out of
the way). `--tree` runs the server from another checkout (e.g. an export of 2a9aaaf)
to compare. 127.0.0.1 only; every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jwt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
import run as bench  # noqa: E402  (bench/run.py: servers pinned to a core)
from support.flood import Flood  # noqa: E402
from support.rawws import OP_BINARY, OP_PING, OP_PONG, OP_TEXT, RawWebSocket, masked_frame  # noqa: E402
from legacy_pacing import cpu_seconds  # noqa: E402
from tables import cell, median_of  # noqa: E402

PING_GAP = 0.1
FLOODS = {"json-ping": (OP_TEXT, b'{"type":"ping"}'), "ping-frame": (OP_PING, b""), "pong-frame": (OP_PONG, b""),
          "binary": (OP_BINARY, b"x")}
# the round-trip cost run: limits out of the way, so every ping is answered
UNLIMITED = {"WS_RATE_PER_SEC": "1000000", "WS_RATE_BURST": "1000000"}


def token(secret: str, user: str) -> str:
    return jwt.encode({"userId": user, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")


def pong(ws, deadline: float):
    """Read until our JSON pong, answering the server's WebSocket pings meanwhile: a frozen
    worker's wait can outlast its heartbeat (25 s), which drops a client that does not."""
    while True:
        op, payload = ws.recv_frame(max(0.01, deadline - time.monotonic()))
        if op == OP_PING:
            ws.send_frame(OP_PONG, payload)
        elif op == OP_TEXT and json.loads(payload).get("type") == "pong":
            return


def one_flood(srv, secret: str, kind: str, seconds: float, user_index: int) -> dict:
    bystander = RawWebSocket(bench.HOST, srv.port, f"/ws?token={token(secret, f'bench-u{user_index}')}")
    bystander.recv_json_until("connected")
    opcode, payload = FLOODS[kind]
    flood = Flood(bench.HOST, srv.port, f"/ws?token={token(secret, f'bench-u{user_index + 1}')}",
                  masked_frame(opcode, payload), seconds=seconds)
    rtts = []
    started = time.monotonic()
    flood.start()
    flood.underway.wait(10)
    while flood.flooding and time.monotonic() - started < seconds + 5:
        t0 = time.monotonic()
        bystander.send_json({"type": "ping"})
        pong(bystander, deadline=t0 + seconds + 30)
        rtts.append(time.monotonic() - t0)
        # 10 pings/s at most: within the bystander's own command rate (20/s)
        time.sleep(max(0.0, t0 + PING_GAP - time.monotonic()))
    flood.wait(seconds + 15)
    ended = time.monotonic() - started
    flood.close()
    bystander.close()
    return {"worst_ms": max(rtts) * 1000 if rtts else None,
            "median_ms": statistics.median(rtts) * 1000 if rtts else None,
            "round_trips": len(rtts), "close_code": flood.close_code,
            "ended_s": ended, "flood_mb": flood.sent / 1e6}


def round_trips(srv, secret: str, count: int, user: str) -> dict:
    """What a well-behaved client's command costs the server: `count` JSON pings, each
    sent once the previous pong arrived; worker CPU per round trip (the read loop's
    yield per read is in it)."""
    ws = RawWebSocket(bench.HOST, srv.port, f"/ws?token={token(secret, user)}")
    ws.recv_json_until("connected")
    pids = srv.refresh_pids()
    cpu0, t0 = cpu_seconds(pids), time.monotonic()
    for _ in range(count):
        ws.send_json({"type": "ping"})
        ws.recv_json_until("pong")
    wall, cpu = time.monotonic() - t0, cpu_seconds(pids) - cpu0
    ws.close()
    return {"us_cpu_per_rt": cpu / count * 1e6, "us_wall_per_rt": wall / count * 1e6}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tree", type=Path, default=None, help="run the server from this checkout")
    ap.add_argument("--floods", default=",".join(FLOODS), help="which floods, comma-separated ('' for none)")
    ap.add_argument("--round-trips", type=int, default=20000,
                    help="JSON ping round trips of one well-behaved client, per repetition (0: skip)")
    args = ap.parse_args()
    os.sched_setaffinity(0, {bench.GEN_CPU})
    ctx = bench.Context(SimpleNamespace(reps=args.reps, nice=0, quiet_wait=30.0), "quick")
    if args.tree:
        ctx.server_src = args.tree.resolve()
        ctx.server_version = f"tree {args.tree}"
    else:
        ctx.server_version = bench.snapshot_server(ctx)
    bench.log(f"server: {ctx.server_version}; floods of {args.seconds} s, {args.reps} repetition(s)")
    srv = bench.Server("ours", ctx, label="abuse")
    srv.start()
    srv.stop()
    bench.add_bench_users(ctx.data_dir / "fonana.sqlite3", 100)
    srv = bench.Server("ours", ctx, label="abuse").start()
    results = {kind: [] for kind in args.floods.split(",") if kind}
    try:
        users = iter(range(0, 100, 2))
        for rep in range(args.reps):
            for kind in results:
                bench.wait_quiet(ctx)
                res = one_flood(srv, ctx.jwt_secret, kind, args.seconds, next(users))
                results[kind].append(res)
                bench.log(f"rep {rep + 1} {kind}: " + json.dumps(
                    {k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.items()}))
    finally:
        srv.stop()
    costs = []
    if args.round_trips:
        srv = bench.Server("ours", ctx, label="roundtrips")
        srv.extra_env = dict(UNLIMITED)
        srv.start()
        try:
            for rep in range(args.reps):
                bench.wait_quiet(ctx)
                costs.append(round_trips(srv, ctx.jwt_secret, args.round_trips, "bench-u99"))
                bench.log(f"rep {rep + 1} round trips: " + json.dumps({k: round(v, 1) for k, v in costs[-1].items()}))
        finally:
            srv.stop()
    bench.log(f"\nmedians over {args.reps} repetition(s)")
    bench.log("| flood | bystander worst RTT (ms) | bystander median RTT (ms) | flooder closed with | after (s) | flood written (MB) |")
    bench.log("|---|---|---|---|---|---|")
    for kind, rs in results.items():
        codes = sorted({str(r["close_code"]) for r in rs})
        bench.log(f"| {kind} | {cell(median_of(rs, 'worst_ms'))} | {cell(median_of(rs, 'median_ms'), 2)} | "
                  f"{'/'.join(codes)} | {cell(median_of(rs, 'ended_s'))} | {cell(median_of(rs, 'flood_mb'))} |")
    if costs:
        bench.log(f"\none client's JSON ping round trips ({args.round_trips} a run), medians: worker CPU "
                  f"{statistics.median(c['us_cpu_per_rt'] for c in costs):.1f} us, wall "
                  f"{statistics.median(c['us_wall_per_rt'] for c in costs):.1f} us per round trip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
