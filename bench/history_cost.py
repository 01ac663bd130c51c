#!/usr/bin/env python3
"""What positions and history cost the fan-out through Redis (issue 9: at most 15 %).

    .venv/bin/python bench/history_cost.py                 # 3 repetitions, 1,000 and 5,000 subscribers
    .venv/bin/python bench/history_cost.py --reps 5 --subscribers 1000 --seconds 4

The redis scenario of bench/run (one gevent worker with REDIS_URL on core 0, a private
redis-server on core 0 too, the C load generator on core 1 publishing through
`POST /api/events` as fast as the deliveries keep up), for three servers, in turns:

- `history`: this tree as it is: every publish runs the publish script (offsets,
  history list RPUSH/LTRIM/EXPIRE, PUBLISH);
- `positions only`: the same with WS_HISTORY_SIZE=0 (the script, no history list);
- `bare PUBLISH`: the server as it was before issue 9 (`--before`, default ddc8d64),
  one PUBLISH per event, no positions, no history.

Reports per configuration the median [min-max] of deliveries/s and of deliveries per
CPU-second of server + Redis (the figure that does not move when other jobs take the
core), the ratio to `bare PUBLISH`, and the OTHER LOAD seen on the server's core.
Everything runs from copies taken at start; everything talks to 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: the servers, the redis-server and the generator)
from tables import spread  # noqa: E402


class Variant(run.Server):
    """Our server from a given source tree with extra environment."""

    def __init__(self, ctx, label, src, env):
        super().__init__("ours", ctx, redis_url=ctx.redis_url, label=label)
        self.src, self.extra = src, env

    def command_env(self):
        cmd, env, _ = super().command_env()
        env.update(self.extra)
        return cmd, env, self.src


def source_at(commit: str, dest: Path) -> Path:
    data = subprocess.run(["git", "archive", commit, "fonana_realtime", "wsgi.py", "gunicorn.conf.py"],
                          cwd=run.ROOT, capture_output=True, check=True).stdout
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest)
    return dest


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--subscribers", default="1000,5000")
    ap.add_argument("--seconds", type=float, default=4, help="measuring window per step")
    ap.add_argument("--before", default="ddc8d64", help="the commit measured as `bare PUBLISH`")
    args = ap.parse_args()
    sizes = [int(n) for n in args.subscribers.split(",")]

    fake = types.SimpleNamespace(reps=args.reps, nice=0, quiet_wait=10)
    ctx = run.Context(fake, "full")
    ctx.p["max_seconds"] = args.seconds
    run.raise_nofile()
    run.build_loadgen()
    ctx.server_version = run.snapshot_server(ctx)
    before = source_at(args.before, ctx.work / "before")
    run.mint_tokens(ctx.tokens_main, ctx.jwt_secret, 0, run.STORM_FIRST)
    run.mint_tokens(ctx.tokens_storm, ctx.jwt_secret, run.STORM_FIRST, run.USERS - run.STORM_FIRST)
    first = run.Server("ours", ctx, label="ours-seed").start()
    first.stop()
    run.add_bench_users(ctx.data_dir / "fonana.sqlite3", run.USERS)
    redis = run.Redis(ctx)
    ctx.redis_url = redis.start()
    if not ctx.redis_url:
        sys.exit("no redis-server could be started")
    ctx.extra_server_pids = [redis.proc.pid]
    variants = [("history", ctx.server_src, {}),
                ("positions only", ctx.server_src, {"WS_HISTORY_SIZE": "0"}),
                ("bare PUBLISH", before, {})]
    results: dict = {}
    print(f"ours: {ctx.server_version}; bare PUBLISH: {args.before}; {args.reps} reps; "
          f"subscribers {sizes}; work dir {ctx.work}", flush=True)
    try:
        for rep in range(args.reps):
            order = variants if rep % 2 == 0 else list(reversed(variants))
            for label, src, env in order:
                load = run.wait_quiet(ctx)
                srv = Variant(ctx, label, src, env).start()
                try:
                    for _ in range(30):
                        status, _ = run.http_get(srv.port, "/ready", 2.0)
                        if status == 200:
                            break
                        time.sleep(0.5)
                    plan = ",".join(f"c{n},max:{args.seconds:g}" for n in sizes)
                    steps, res = run.loadgen(ctx, srv, plan, tokens=ctx.tokens_main, channel="post",
                                             deadline=120 + sizes[-1] / 60 + len(sizes) * (args.seconds + 20))
                    for st in steps:
                        if st["kind"] != "publish":
                            continue
                        m = run.publish_metrics(st, res)
                        m["cores_busy_before"] = load
                        results.setdefault((label, st["subscribers"]), []).append(m)
                        f = m["foreign_load"]
                        print(f"[rep {rep + 1}] {label:<15} {st['subscribers']:>6} subs: "
                              f"{m['deliveries_per_sec']:>9,.0f} deliveries/s, "
                              f"{m['deliveries_per_cpu_s'] or 0:>9,.0f} per CPU-s (server+redis), "
                              f"p99 {m['lat_p99_ms']:.1f} ms"
                              + (f", OTHER LOAD {f:.0%}" if f else ""), flush=True)
                finally:
                    srv.stop()
    finally:
        redis.stop()
    out = run.RESULTS
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"{stamp}-history-cost.json").write_text(json.dumps(
        {f"{k[0]}|{k[1]}": v for k, v in results.items()}, indent=1, default=str))
    print("\n| subscribers | server | deliveries/s | vs bare | deliveries per CPU-s (server + Redis) | vs bare | OTHER LOAD (max) |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        base = results.get(("bare PUBLISH", n), [])
        base_rate = statistics.median([m["deliveries_per_sec"] for m in base]) if base else None
        base_cpu = statistics.median([m["deliveries_per_cpu_s"] for m in base if m["deliveries_per_cpu_s"]]) if base else None
        for label, _, _ in variants:
            ms = results.get((label, n), [])
            if not ms:
                continue
            rate = [m["deliveries_per_sec"] for m in ms]
            cpu = [m["deliveries_per_cpu_s"] for m in ms]
            other = max((m["foreign_load"] or 0) for m in ms)
            r1 = f"{statistics.median(rate) / base_rate:.2f}" if base_rate else "-"
            r2 = f"{statistics.median([c for c in cpu if c]) / base_cpu:.2f}" if base_cpu else "-"
            print(f"| {n:,} | {label} | {spread(rate)} | {r1} | {spread(cpu)} | {r2} | {other:.0%} |")
    shutil.rmtree(ctx.work, ignore_errors=True)


if __name__ == "__main__":
    main()
