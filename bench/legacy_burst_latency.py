#!/usr/bin/env python3
"""bench/legacy_burst_latency.py: how long a burst takes to reach a legacy client at a given
WS_LEGACY_TYPE_GAP_MS, and how much margin the gap leaves the Fonana client (PROTOCOL.md 8).

    .venv/bin/python bench/legacy_burst_latency.py [--gaps 120,200] [--reps 3] [--jitter 0.06]

One gevent worker (embedded store, in-process broker, core 0) per gap; one legacy client
(`bench-u0`, the websockets library, this process on core 1) subscribed to the hot post
`demo-open-post`. Per repetition, two bursts, each read to its end:
- notifications: 30 `notification`s to bench-u0 in one list publish; latency = from the
  publish's 202 to the arrival of the 30th;
- hot post: 60 `post_liked` on the post, one per HTTP request at 50/s (counts 1..60);
  latency = from the last one's 202 to the arrival of `likesCount: 60`.
Each burst is read straight from the server and again through tests/support's TcpProxy as
a plain relay (Nagle on) that delays each server->client chunk by a random 0..--jitter s in
order. For the relayed runs the client's own rule is applied to arrival times: an event
whose `type` arrived < 100 ms after the last one it kept is dropped (lib/services/websocket.ts);
reported: frames dropped, and the least arrival spacing of two frames of one type (the
margin is that minus 100 ms).
Everything talks to 127.0.0.1 only; every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import run as bench  # noqa: E402  (bench/run.py: servers, tokens)
from support.tcpproxy import TcpProxy  # noqa: E402  (the suite's relay, with its jitter mode)

from websockets.sync.client import connect  # noqa: E402

HOT_POST = bench.POST_ID
USER = "bench-u0"
BURST = 30
LIKES, LIKES_PER_SEC = 60, 50      # the hot post: 60 likes over 1.2 s
THROTTLE = 0.100              # the Fonana client's per-type window


def publish(port: int, api_key: str, events: list) -> None:
    req = urllib.request.Request(f"http://{bench.HOST}:{port}/api/events", data=json.dumps({"events": events}).encode(),
                                 headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                                          "Connection": "close"})
    with urllib.request.urlopen(req, timeout=10) as r:
        if r.status != 202:
            raise RuntimeError(f"publish answered {r.status}")


def notifications(tag: str) -> list:
    return [{"type": "notification", "userId": USER, "notification": {
        "id": f"{tag}-{i}", "userId": USER, "type": "SYSTEM_ANNOUNCEMENT", "title": "t", "message": "m",
        "isRead": False, "metadata": None, "createdAt": "2026-01-01T00:00:00.000Z"}} for i in range(BURST)]


def like(n: int) -> dict:
    return {"type": "post_liked", "postId": HOT_POST, "userId": "bench-u1", "likesCount": n}


def read_until(ws, done, got: list, timeout: float = 30.0) -> None:
    """Append (arrival time, frame) to `got` until `done(frame)`; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        got.append((time.monotonic(), frame))
        if done(frame):
            return


def throttled(frames) -> tuple[int, float | None]:
    """(frames the Fonana client drops, least arrival spacing of two frames of one type)."""
    last_kept: dict = {}
    last_seen: dict = {}
    dropped, least = 0, None
    for t, f in frames:
        kind = f.get("type")
        if kind in last_seen:
            spacing = t - last_seen[kind]
            least = spacing if least is None else min(least, spacing)
        last_seen[kind] = t
        if kind in last_kept and t - last_kept[kind] < THROTTLE:
            dropped += 1
            continue
        last_kept[kind] = t
    return dropped, least


def one_burst(port: int, api_key: str, token: str, kind: str, via: int | None, tag: str) -> dict:
    """notifications: 30 in one list publish, latency to the 30th. hot post: LIKES
    post_liked one per HTTP request at LIKES_PER_SEC, latency from the last one's 202 to
    the arrival of its count (the likes between are conflated while they wait)."""
    url = f"ws://{bench.HOST}:{via or port}/ws?token={token}"
    with connect(url, proxy=None, open_timeout=10, ping_interval=None, compression=None) as ws:
        json.loads(ws.recv(timeout=10))                              # connected
        ws.send(json.dumps({"type": "subscribe", "channel": {"type": "post", "postId": HOT_POST}}))
        while json.loads(ws.recv(timeout=10)).get("type") != "subscribed":
            pass
        if kind == "notifications":
            last = f"{tag}-{BURST - 1}"
            def done(f):
                return f.get("type") == "notification" and f["notification"]["id"] == last
        else:
            def done(f):
                return f.get("type") == "post_liked" and f.get("likesCount") == LIKES
        frames: list = []
        reader = threading.Thread(target=read_until, args=(ws, done, frames), daemon=True)
        reader.start()
        if kind == "notifications":
            publish(port, api_key, notifications(tag))
        else:
            start = time.monotonic()
            for n in range(1, LIKES + 1):
                pause = start + (n - 1) / LIKES_PER_SEC - time.monotonic()
                if pause > 0:
                    time.sleep(pause)                # the publishing schedule itself
                publish(port, api_key, [like(n)])
        t0 = time.monotonic()
        reader.join(35)
        if reader.is_alive() or not frames or not done(frames[-1][1]):
            raise RuntimeError(f"{kind} via {'relay' if via else 'direct'}: the burst did not end")
    dropped, least = throttled(frames)
    return {"latency": frames[-1][0] - t0, "frames": len(frames), "dropped": dropped, "least_spacing": least}


def run_gap(ctx, gap: int, reps: int, jitter: float) -> dict:
    srv = bench.Server("ours", ctx, label=f"gap-{gap}")
    srv.extra_env = {"WS_LEGACY_TYPE_GAP_MS": str(gap), "WS_RESUME_SECONDS": "0"}
    srv.start()
    token = next(line.split()[1] for line in ctx.tokens_main.read_text().splitlines() if line.startswith(USER + " "))
    relay = TcpProxy(bench.HOST, srv.port, nodelay=False, jitter=jitter)
    out: dict = {}
    try:
        for rep in range(reps):
            for kind in ("notifications", "hot post"):
                for path, via in (("direct", None), ("relay", relay.port)):
                    res = one_burst(srv.port, ctx.api_key, token, kind, via, f"g{gap}r{rep}{path}")
                    out.setdefault((kind, path), []).append(res)
                    bench.log(f"gap {gap} rep {rep + 1} {kind} {path}: " + json.dumps(
                        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))
                    time.sleep(1.2)      # the connection's pacing state is dropped after 1 s quiet
    finally:
        relay.down()
        srv.stop()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gaps", default="120,200")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--jitter", type=float, default=0.06)
    args = ap.parse_args()
    os.sched_setaffinity(0, {bench.GEN_CPU})
    ctx = bench.Context(SimpleNamespace(reps=args.reps, nice=0, quiet_wait=30.0), "quick")
    ctx.server_version = bench.snapshot_server(ctx)
    bench.log(f"our server: {ctx.server_version}; one legacy client of {HOT_POST}; bursts of {BURST}; "
              f"relay jitter 0..{args.jitter * 1000:.0f} ms")
    first = bench.Server("ours", ctx, label="seed").start()
    first.stop()
    bench.add_bench_users(ctx.data_dir / "fonana.sqlite3", 2)
    bench.mint_tokens(ctx.tokens_main, ctx.jwt_secret, 0, 2)
    results = {}
    for gap in (int(g) for g in args.gaps.split(",")):
        bench.wait_quiet(ctx)
        results[gap] = run_gap(ctx, gap, args.reps, args.jitter)
    bench.log(f"\nmedians over {args.reps} repetition(s); dropped = the Fonana client's 100 ms rule on arrival"
              " times, summed over the repetitions")
    bench.log("| gap (ms) | burst | path | latency to the last (s) | dropped | least same-type spacing (ms) |")
    bench.log("|---|---|---|---|---|---|")
    for gap, per in results.items():
        for (kind, path), rs in per.items():
            spacings = [r["least_spacing"] for r in rs if r["least_spacing"] is not None]
            bench.log(f"| {gap} | {kind} | {path} | {statistics.median(r['latency'] for r in rs):.3f} | "
                      f"{sum(r['dropped'] for r in rs)} | "
                      f"{min(spacings) * 1000:.0f} (median {statistics.median(spacings) * 1000:.0f}) |"
                      if spacings else "| – |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
