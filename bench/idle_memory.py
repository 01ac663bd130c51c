#!/usr/bin/env python3
"""bench/idle_memory.py: where an idle connection's memory goes (issue 22).

    .venv/bin/python bench/idle_memory.py [--clients 10000] [--trace] [--tree DIR]

`bench/run --only idle` gives the RSS per idle connection; this says what it is made of.
One gunicorn as `bench/run` starts it (one gevent worker, embedded store, in-process
broker, pinned to core 0), and the load generator (core 1): 20 clients come and go
(warm-up), then `--clients` connect, each authenticated and subscribed to its own
notifications, and stay. Before and after, a probe inside the worker (a greenlet
started by a gunicorn hook of this script's, polling for a request file) reads:

- the worker's RSS and, from /proc/self/smaps, which mappings grew (the heap, anonymous);
- glibc's malloc in use (mallinfo2) and Python's object allocator (sys._debugmallocstats);
- every greenlet's saved stack slice (greenlet's `_stack_saved`): count, bytes, spread;
- the gc-tracked objects by type: how many more, and their sys.getsizeof;
- with `--trace` (PYTHONTRACEMALLOC=1 for the server: it inflates the RSS, so its RSS
  figure is not the bench's), tracemalloc's snapshots diffed, by line and by file.

Everything is divided by the number of clients. 127.0.0.1 only; every step has a deadline.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import run as bench  # noqa: E402  (bench/run.py: servers pinned to a core, the load generator)

# The gunicorn configuration the server runs with: the project's, plus a worker hook that
# starts the probe. Written next to the server's copy of gunicorn.conf.py.
PROBE_CONF = textwrap.dedent('''
    exec(open("gunicorn.conf.py").read())

    def post_worker_init(worker):
        import gevent
        from idle_memory_probe import serve
        gevent.spawn(serve, {work!r})
''')

PROBE = textwrap.dedent('''
    """Runs inside the worker: answers a request file with a JSON file of readings."""
    import collections, ctypes, gc, json, os, sys, tracemalloc

    import gevent
    import greenlet


    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]


    def mallinfo():
        try:
            f = ctypes.CDLL(None).mallinfo2
        except (OSError, AttributeError):
            return {}
        f.restype = MallInfo2
        m = f()
        return {n: getattr(m, n) for n, _ in MallInfo2._fields_}


    def smaps():
        """KiB of RSS by mapping kind: [heap], [stack], anonymous, file-backed."""
        out = collections.Counter()
        kind = None
        with open("/proc/self/smaps") as fh:
            for line in fh:
                head = line.split()
                if not head:
                    continue
                if not head[0].endswith(":") or "-" in head[0]:
                    name = head[5] if len(head) > 5 else ""
                    kind = name if name.startswith("[") else ("file" if name else "anon")
                elif head[0] == "Rss:":
                    out[kind] += int(head[1])
        return dict(out)


    def pymalloc():
        """Python's object allocator: arenas allocated now and bytes in used blocks."""
        # it writes to the C stderr: fd 2, pointed at a file meanwhile
        import tempfile
        with tempfile.TemporaryFile("w+") as tmp:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(tmp.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            text = tmp.read()
        res = {}
        for line in text.splitlines():
            if line.startswith("# arenas allocated current"):
                res["arenas_current"] = int(line.split("=")[1].replace(",", ""))
            elif line.startswith("# bytes in allocated blocks"):
                res["bytes_in_blocks"] = int(line.split("=")[1].replace(",", ""))
        return res


    def greenlets():
        sizes = [g._stack_saved for g in gc.get_objects() if isinstance(g, greenlet.greenlet)]
        sizes.sort()
        return {"count": len(sizes), "saved_bytes": sum(sizes),
                "p50": sizes[len(sizes) // 2] if sizes else 0, "max": sizes[-1] if sizes else 0,
                "object_bytes": sum(sys.getsizeof(g) for g in gc.get_objects()
                                    if isinstance(g, greenlet.greenlet))}


    def by_type():
        count, size = collections.Counter(), collections.Counter()
        for o in gc.get_objects():
            t = type(o)
            name = f"{t.__module__}.{t.__qualname__}"
            count[name] += 1
            try:
                size[name] += sys.getsizeof(o)
            except TypeError:
                pass
        return {"count": dict(count), "size": dict(size)}


    def reading(work, n):
        gc.collect()
        rss = 0
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        res = {"rss_kib": rss, "smaps": smaps(), "malloc": mallinfo(), "pymalloc": pymalloc(),
               "greenlets": greenlets(), "types": by_type(), "tracing": tracemalloc.is_tracing()}
        if tracemalloc.is_tracing():
            path = os.path.join(work, f"snapshot-{n}.tracemalloc")
            tracemalloc.take_snapshot().dump(path)
            res["snapshot"] = path
        return res


    def serve(work):
        n = 0
        while True:
            req = os.path.join(work, "probe.request")
            if os.path.exists(req):
                os.unlink(req)
                n += 1
                res = reading(work, n)
                tmp = os.path.join(work, f"probe-{n}.json.tmp")
                with open(tmp, "w") as fh:
                    json.dump(res, fh)
                os.rename(tmp, os.path.join(work, f"probe-{n}.json"))
            gevent.sleep(0.1)
''')


class ProbedServer(bench.Server):
    """Our server, run with the probe's gunicorn configuration."""

    def command_env(self):
        cmd, env, cwd = super().command_env()
        cmd[cmd.index("gunicorn.conf.py")] = "idle_memory_conf.py"
        env["PYTHONPATH"] = str(cwd)
        return cmd, env, cwd


class Probe:
    def __init__(self, work: Path):
        self.work, self.n = work, 0

    def read(self, timeout=120.0) -> dict:
        self.n += 1
        (self.work / "probe.request").write_text("")
        path = self.work / f"probe-{self.n}.json"
        deadline = time.time() + timeout
        while not path.exists():
            if time.time() > deadline:
                raise RuntimeError("the probe did not answer")
            time.sleep(0.1)
        return json.loads(path.read_text())


def per_conn(a, b, n):
    return (b - a) / n


def report(base: dict, full: dict, n: int, top: int):
    out = []
    p = out.append
    p(f"\n{n:,} idle clients: per connection (bytes unless said)")
    p(f"  worker RSS          {per_conn(base['rss_kib'], full['rss_kib'], n) * 1024:8.0f}"
      f"   ({base['rss_kib'] / 1024:.1f} -> {full['rss_kib'] / 1024:.1f} MiB)")
    for kind in sorted(set(base["smaps"]) | set(full["smaps"])):
        d = per_conn(base["smaps"].get(kind, 0), full["smaps"].get(kind, 0), n) * 1024
        if abs(d) >= 16:
            p(f"    RSS of {kind:<12}{d:8.0f}")
    mb, mf = base["malloc"], full["malloc"]
    if mb:
        p(f"  malloc in use       {per_conn(mb['uordblks'] + mb['hblkhd'], mf['uordblks'] + mf['hblkhd'], n):8.0f}"
          f"   (free in malloc's heap after: {mf['fordblks'] / 1024 / 1024:.1f} MiB)")
    pb, pf = base["pymalloc"], full["pymalloc"]
    if pb.get("arenas_current") is not None:
        p(f"  pymalloc arenas     {per_conn(pb['arenas_current'], pf['arenas_current'], n) * 1024 * 1024:8.0f}"
          f"   blocks in use {per_conn(pb['bytes_in_blocks'], pf['bytes_in_blocks'], n):8.0f}")
    gb, gf = base["greenlets"], full["greenlets"]
    p(f"  greenlets           {per_conn(gb['count'], gf['count'], n):8.2f} each;"
      f" saved stacks {per_conn(gb['saved_bytes'], gf['saved_bytes'], n):6.0f},"
      f" objects {per_conn(gb['object_bytes'], gf['object_bytes'], n):5.0f}"
      f" (p50 {gf['p50']}, max {gf['max']})")
    p("  gc-tracked objects by type (count and getsizeof per connection):")
    cb, cf = base["types"]["count"], full["types"]["count"]
    sb, sf = base["types"]["size"], full["types"]["size"]
    rows = []
    for name in set(cf) | set(cb):
        dc = per_conn(cb.get(name, 0), cf.get(name, 0), n)
        ds = per_conn(sb.get(name, 0), sf.get(name, 0), n)
        if abs(dc) >= 0.05:
            rows.append((ds, dc, name))
    rows.sort(reverse=True)
    for ds, dc, name in rows[:top]:
        p(f"    {dc:6.2f} x {name:<58} {ds:7.0f}")
    p(f"    total getsizeof of gc-tracked objects: {sum(r[0] for r in rows):.0f}")
    if base.get("snapshot") and full.get("snapshot"):
        import tracemalloc
        a = tracemalloc.Snapshot.load(base["snapshot"])
        b = tracemalloc.Snapshot.load(full["snapshot"])
        for group in ("filename", "lineno"):
            stats = b.compare_to(a, group)
            total = sum(s.size_diff for s in stats)
            p(f"  tracemalloc by {group}: {total / n:.0f} per connection in all")
            for s in stats[:top]:
                if abs(s.size_diff / n) < 8:
                    break
                frame = s.traceback[0]
                where = (frame.filename if group == "filename" else f"{frame.filename}:{frame.lineno}")
                where = where.replace(str(ROOT), "").replace(sys.prefix, "<venv>")
                p(f"    {s.size_diff / n:7.0f}  {s.count_diff / n:6.2f} blocks  {where}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--trace", action="store_true", help="tracemalloc in the worker (PYTHONTRACEMALLOC=1)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--tree", type=Path, default=None, help="run the server from this checkout")
    args = ap.parse_args()
    bench.raise_nofile()
    bench.build_loadgen()
    ctx = bench.Context(SimpleNamespace(reps=1, nice=0, quiet_wait=10.0), "full")
    if args.tree:
        ctx.server_src = ctx.work / "server"
        import shutil
        shutil.copytree(args.tree.resolve() / "fonana_realtime", ctx.server_src / "fonana_realtime",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("wsgi.py", "gunicorn.conf.py"):
            shutil.copy2(args.tree.resolve() / name, ctx.server_src / name)
        ctx.server_version = f"tree {args.tree}"
    else:
        ctx.server_version = bench.snapshot_server(ctx)
    (ctx.server_src / "idle_memory_conf.py").write_text(PROBE_CONF.format(work=str(ctx.work)))
    (ctx.server_src / "idle_memory_probe.py").write_text(PROBE)
    bench.mint_tokens(ctx.tokens_main, ctx.jwt_secret, 0, args.clients)
    bench.mint_tokens(ctx.tokens_storm, ctx.jwt_secret, args.clients, 20)
    seed = bench.Server("ours", ctx, label="seed").start()
    seed.stop()
    bench.add_bench_users(ctx.data_dir / "fonana.sqlite3", args.clients + 20)
    bench.log(f"server: {ctx.server_version}; {args.clients:,} clients; tracemalloc {'on' if args.trace else 'off'}")
    srv = ProbedServer("ours", ctx, label="probed")
    if args.trace:
        srv.extra_env = {"PYTHONTRACEMALLOC": "1"}
    srv.start(timeout=60)
    probe = Probe(ctx.work)
    try:
        bench.loadgen(ctx, srv, "c20", tokens=ctx.tokens_storm, channel="notifications", deadline=30)
        time.sleep(1.0)
        base = probe.read()
        readings = {}

        def at_wait(obj):
            time.sleep(2.0)
            readings["full"] = probe.read()
            return "NEXT"

        bench.loadgen(ctx, srv, f"c{args.clients},w", tokens=ctx.tokens_main, channel="notifications",
                      deadline=60 + args.clients / 100, on_wait=at_wait)
        bench.log(report(base, readings["full"], args.clients, args.top))
        bench.log(f"\n(server tree RSS, as bench/run reads it: {srv.rss() / 1024:.1f} MiB after the clients left)")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
