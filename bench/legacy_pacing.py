#!/usr/bin/env python3
"""bench/legacy_pacing.py: what pacing of legacy connections costs and buys (PROTOCOL.md 8).

    .venv/bin/python bench/legacy_pacing.py [--clients 5000] [--seconds 8] [--reps 3]

5,000 legacy connections (the C load generator, bench/loadgen, pinned to core 1) hold the
hot post `demo-open-post`; this process (also on core 1) publishes 200 `post_liked`/s to it
on a fixed schedule for the measured window (one event per HTTP request, keep-alive) and,
one second in, a burst of 30 `notification`s to one user in one list publish. Our server
(one gevent worker, embedded store, in-process broker, core 0) runs once with pacing on
(WS_LEGACY_TYPE_GAP_MS=120, the default) and once with it off (0), alternating which goes first.

Measured over the window, from the server's own counters (/metrics) and /proc:
- frames written per connection per second: (events_delivered - legacy_frames_replaced) /
  clients / seconds (a held frame counts as delivered when a connection accepts it; one
  later replaced by a newer one is never written);
- p99 (and max) of fonana_rt_legacy_hold_seconds: how long each held frame waited
  (bucket upper bounds);
- server CPU seconds per second of the window (utime + stime of its processes);
- OTHER LOAD: how busy the server's core was with other processes.
Everything talks to 127.0.0.1 only; every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (bench/run.py: servers, tokens, the load generator)
from tables import cell, median_of  # noqa: E402

HOT_POST = bench.POST_ID
LIKES_PER_SEC = 200
BURST = 30
BURST_USER = "bench-u0"


def metrics_text(port: int, api_key: str) -> str:
    req = urllib.request.Request(f"http://{bench.HOST}:{port}/metrics",
                                 headers={"Authorization": f"Bearer {api_key}", "Connection": "close"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode()


def parse_metrics(text: str) -> dict:
    out: dict = {"buckets": {}}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("fonana_rt_legacy_hold_seconds_bucket"):
            le = name.split('le="', 1)[1].split('"', 1)[0]
            out["buckets"][float(le)] = out["buckets"].get(float(le), 0.0) + float(value)
        elif "{" not in name:
            out[name] = out.get(name, 0.0) + float(value)
    return out


def quantile(buckets_before: dict, buckets_after: dict, q: float):
    """The bucket upper bound holding quantile q of the window's observations."""
    les = sorted(buckets_after)
    counts = [buckets_after[le] - buckets_before.get(le, 0.0) for le in les]
    total = counts[-1] if counts else 0
    if total <= 0:
        return None, 0
    for le, c in zip(les, counts):
        if c >= q * total:
            return le, int(total)
    return les[-1], int(total)


def cpu_seconds(pids) -> float:
    tck = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tck
        except (OSError, IndexError, ValueError):
            pass
    return total


def publisher(port: int, api_key: str, seconds: float, stop: threading.Event, stats: dict):
    """200 post_liked/s on a fixed schedule, plus the notification burst 1 s in."""
    import http.client
    conn = http.client.HTTPConnection(bench.HOST, port, timeout=10)
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    def post(body):
        conn.request("POST", "/api/events", json.dumps(body), headers)
        r = conn.getresponse()
        r.read()
        if r.status != 202:
            stats["errors"] += 1

    start = time.monotonic()
    n = 0
    burst_sent = False
    while not stop.is_set():
        due = start + n / LIKES_PER_SEC
        now = time.monotonic()
        if now - start >= seconds:
            break
        if not burst_sent and now - start >= 1.0:
            burst_sent = True
            post({"events": [{"type": "notification", "userId": BURST_USER, "notification": {
                "id": f"bench-n{i}", "userId": BURST_USER, "type": "SYSTEM_ANNOUNCEMENT", "title": "t",
                "message": "m", "isRead": False, "metadata": None, "createdAt": "2026-01-01T00:00:00.000Z"}}
                for i in range(BURST)]})
        if due > now:
            time.sleep(due - now)
        post({"event": {"type": "post_liked", "postId": HOT_POST, "userId": "bench-u1", "likesCount": n}})
        n += 1
        stats["likes"] = n
        if time.monotonic() - due > 2.0:
            stats["behind"] = True           # the server does not take 200/s: say so, go on
    conn.close()


def one_run(ctx, label: str, gap, clients: int, seconds: float) -> dict:
    srv = bench.Server("ours", ctx, label=label)
    extra = {} if gap is None else {"WS_LEGACY_TYPE_GAP_MS": str(gap)}
    orig = srv.command_env

    def command_env():
        cmd, env, cwd = orig()
        env.update(extra)
        return cmd, env, cwd
    srv.command_env = command_env
    srv.start()
    result: dict = {}
    try:
        def at_wait(_obj):
            pids = srv.refresh_pids()
            before = parse_metrics(metrics_text(srv.port, ctx.api_key))
            cpu0, t0 = cpu_seconds(pids), time.monotonic()
            stat0 = Path("/proc/stat").read_text()
            stop, stats = threading.Event(), {"errors": 0, "likes": 0, "behind": False}
            pub = threading.Thread(target=publisher, args=(srv.port, ctx.api_key, seconds, stop, stats))
            pub.start()
            pub.join(seconds + 30)
            stop.set()
            cpu1, t1 = cpu_seconds(pids), time.monotonic()
            stat1 = Path("/proc/stat").read_text()
            after = parse_metrics(metrics_text(srv.port, ctx.api_key))
            window = t1 - t0
            delivered = after.get("fonana_rt_events_delivered_total", 0) - before.get("fonana_rt_events_delivered_total", 0)
            replaced = (after.get("fonana_rt_legacy_frames_replaced_total", 0)
                        - before.get("fonana_rt_legacy_frames_replaced_total", 0))
            held = after.get("fonana_rt_legacy_frames_held_total", 0) - before.get("fonana_rt_legacy_frames_held_total", 0)
            p99, n_obs = quantile(before["buckets"], after["buckets"], 0.99)
            pmax, _ = quantile(before["buckets"], after["buckets"], 1.0)
            server_cpu = (cpu1 - cpu0) / window
            core = _core_busy(stat0, stat1, bench.SERVER_CPU)
            result.update(
                frames_per_conn_per_s=(delivered - replaced) / clients / window,
                written=delivered - replaced, held=held, replaced=replaced,
                hold_p99=p99, hold_max=pmax, hold_writes=n_obs,
                server_cpu=server_cpu, other_load=max(0.0, core - server_cpu) if core is not None else None,
                likes_published=stats["likes"], publish_errors=stats["errors"], behind=stats["behind"],
                window=window)
            return "STOP"

        bench.loadgen(ctx, srv, f"c{clients},w", tokens=ctx.tokens_main, channel="post",
                      deadline=seconds + 240, on_wait=at_wait, extra=("--hold", str(seconds + 120)))
    finally:
        srv.stop()
    return result


def _core_busy(stat0: str, stat1: str, cpu: int):
    def row(text):
        for line in text.splitlines():
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return sum(v), v[3] + v[4]
        return None
    a, b = row(stat0), row(stat1)
    if not a or not b or b[0] == a[0]:
        return None
    return 1.0 - (b[1] - a[1]) / (b[0] - a[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    bench.raise_nofile()
    bench.build_loadgen()
    os.sched_setaffinity(0, {bench.GEN_CPU})
    ctx = bench.Context(SimpleNamespace(reps=args.reps, nice=0, quiet_wait=30.0), "quick")
    ctx.quiet_budget = 240.0
    ctx.server_version = bench.snapshot_server(ctx)
    bench.log(f"our server: {ctx.server_version}; {args.clients} legacy clients on {HOT_POST}, "
              f"{LIKES_PER_SEC} likes/s for {args.seconds} s, a burst of {BURST} notifications to {BURST_USER}")
    first = bench.Server("ours", ctx, label="ours-seed").start()
    first.stop()
    bench.add_bench_users(ctx.data_dir / "fonana.sqlite3", bench.USERS)
    bench.mint_tokens(ctx.tokens_main, ctx.jwt_secret, 0, args.clients)
    runs = {"on": [], "off": []}
    for rep in range(args.reps):
        # explicit both ways: bench/run's server settings turn pacing off for its own scenarios
        order = [("on", 120), ("off", 0)] if rep % 2 == 0 else [("off", 0), ("on", 120)]
        for name, gap in order:
            bench.wait_quiet(ctx)            # others' work on a shared machine skews every figure
            res = one_run(ctx, f"pacing-{name}", gap, args.clients, args.seconds)
            runs[name].append(res)
            bench.log(f"rep {rep + 1} pacing {name}: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                                                     for k, v in res.items()}))
    bench.log("\nmedians over %d repetition(s)" % args.reps)
    bench.log("| pacing | frames/conn/s | held frames | replaced | p99 hold (s, bucket) | max hold (s, bucket) "
              "| server CPU (s/s) | OTHER LOAD |")
    bench.log("|---|---|---|---|---|---|---|---|")
    for name in ("on", "off"):
        rs = runs[name]

        def med(key, digits=3, rs=rs):
            return cell(median_of(rs, key), digits)
        bench.log(f"| {name} | {med('frames_per_conn_per_s', 2)} | {med('held', 0)} | "
                  f"{med('replaced', 0)} | {med('hold_p99')} | {med('hold_max')} | "
                  f"{med('server_cpu', 2)} | {med('other_load', 2)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
