#!/usr/bin/env python3
"""bench/run: every benchmark scenario against our server and the Node reference.

    bench/run            the full suite (3 repetitions, about 15 minutes), writes docs/BENCHMARKS.md
    bench/run --quick    fewer and smaller runs (about 3 minutes), writes bench/results/ only

Each server runs pinned to core 0 (`taskset -c 0`), the load generator (bench/loadgen, C)
to core 1. Repetitions alternate which server goes first. Every figure is printed as
median [min-max] over the repetitions, with the ratio ours/reference, and next to it the
CPU the generator and the server spent per delivery (or per connect) in the same window.
A run in which any client misses or duplicates an event, is refused, or is dropped fails
loudly and makes the exit status non-zero. See bench/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))      # support.db: the throw-away PostgreSQL database
BENCH = ROOT / "bench"
LOADGEN_SRC = BENCH / "loadgen" / "loadgen.c"
LOADGEN = BENCH / "loadgen" / "build" / "loadgen"
REFERENCE = BENCH / "reference"
VENV = ROOT / ".venv"
DOCS = ROOT / "docs" / "BENCHMARKS.md"
RESULTS = BENCH / "results"
NOTES_MARK = "<!-- notes below this line are kept by bench/run -->"

SERVER_CPU, GEN_CPU = 0, 1
HOST = "127.0.0.1"
POST_ID = "demo-open-post"          # open to every user in our embedded seed
USERS = 12000                       # bench-u0 .. bench-u11999
STORM_FIRST = 10000                 # the storm uses users nobody connected as yet

PROFILES = {
    "full": dict(reps=3, idle=[1000, 5000, 10000], sweep=[1000, 2500, 5000, 10000], headline=[1000, 5000],
                 fixed_n=5000, fixed_deliveries=20000, fixed_seconds=8, max_seconds=4, warmup=1.0,
                 storm_n=2000, storm_inflight=200, redis=[1000, 5000], idle_settle=2.0, reconnect_n=10000),
    "quick": dict(reps=1, idle=[1000, 5000], sweep=[1000, 5000], headline=[1000, 5000],
                  fixed_n=5000, fixed_deliveries=20000, fixed_seconds=4, max_seconds=2, warmup=0.5,
                  storm_n=2000, storm_inflight=200, redis=[1000], idle_settle=1.0, reconnect_n=10000),
}

SERVERS = ("ours", "reference")
# Our server's databases for the storm and reconnect groups (issue 22): the embedded
# default, and PostgreSQL as production runs it (a bench database made for the run).
DATABASES = ("sqlite", "postgresql")
PG_ADMIN_URL = os.environ.get("FONANA_BENCH_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres")


def keyed(key, db):
    """The results key of a storm/reconnect figure on `db` ("storm", "storm_pg")."""
    return key if db == "sqlite" else f"{key}_pg"


def log(msg=""):
    print(msg, flush=True)


def banner(msg):
    line = "!" * 78
    log(f"\n{line}\n!! {msg}\n{line}")


# ---------------------------------------------------------------------------
# machine, processes


def raise_nofile():
    """65536 open files for the servers and the generator (children inherit it); where
    the hard limit cannot be raised (a container without CAP_SYS_RESOURCE), up to it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, max(65536, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        if ppid == pid:
            kids.append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children_of(p))
    return out


def rss_kib(pids) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def core_busy(seconds=1.0):
    def snap():
        out = {}
        with open("/proc/stat") as fh:
            for line in fh:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *vals = line.split()
                    v = [int(x) for x in vals[:8]]
                    out[name] = (sum(v) - v[3] - v[4], sum(v))
        return out
    a = snap()
    time.sleep(seconds)
    b = snap()
    return {k: (b[k][0] - a[k][0]) / max(1, b[k][1] - a[k][1]) for k in a if k in b}


def wait_quiet(ctx, threshold=0.25):
    """Wait until both pinned cores are mostly idle (other people's work on a shared
    machine skews every figure), within a budget for the whole run; returns their load."""
    start = time.time()
    load = core_busy(0.5)
    while time.time() - start < min(ctx.args.quiet_wait, ctx.quiet_budget):
        if load.get(f"cpu{SERVER_CPU}", 0) < threshold and load.get(f"cpu{GEN_CPU}", 0) < threshold:
            break
        load = core_busy(1.0)
    ctx.quiet_budget -= time.time() - start
    return load


def http_get(port, path, timeout=2.0):
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


def wait_ready(port, tries=30):
    """/ready's last answer (status, body), after it said 200 or `tries` half-second waits."""
    status, body = None, b""
    for _ in range(tries):
        status, body = http_get(port, "/ready", 2.0)
        if status == 200:
            break
        time.sleep(0.5)
    return status, body


def machine_info():
    info = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU(s)", "Hypervisor vendor"):
                info[k.strip()] = v.strip()
    except OSError:
        pass
    info["kernel"] = platform.release()
    info["python"] = platform.python_version()
    try:
        info["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        info["node"] = "?"
    try:
        info["ws"] = json.loads((REFERENCE / "node_modules" / "ws" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        info["ws"] = "?"
    from importlib import metadata
    for dist in ("gunicorn", "gunicorn-h1c", "gevent", "wsproto", "Flask"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "?"
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        info["memory"] = f"{int(mem) // 1024 // 1024} GiB"
    except (OSError, IndexError, ValueError):
        pass
    return info


# ---------------------------------------------------------------------------
# preparation


def build_loadgen():
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return
    LOADGEN.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["cc", "-O2", "-Wall", "-o", str(LOADGEN), str(LOADGEN_SRC), "-lz", "-lcrypto"]
    log("building the load generator: " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def ensure_reference():
    if (REFERENCE / "node_modules" / "ws" / "package.json").exists():
        return
    log("installing the reference's node_modules (npm ci)")
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=REFERENCE, check=True)


def mint_tokens(path: Path, secret: str, first: int, count: int):
    import jwt  # PyJWT, from the project's venv
    exp = int(time.time()) + 3600
    with open(path, "w") as fh:
        for i in range(first, first + count):
            uid = f"bench-u{i}"
            fh.write(f"{uid} {jwt.encode({'userId': uid, 'exp': exp}, secret, algorithm='HS256')}\n")


def add_bench_users(db: Path, count: int):
    """Insert bench-u0.. into the embedded SQLite users table, filling whatever the
    schema requires (NOT NULL columns without a default)."""
    conn = sqlite3.connect(db, timeout=30)
    cols = conn.execute('PRAGMA table_info("users")').fetchall()
    if not cols:
        raise RuntimeError(f"{db} has no users table")
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    names, makers = [], []
    for _, name, ctype, notnull, default, _pk in cols:
        if name == "id":
            names.append(name)
            makers.append(lambda i: f"bench-u{i}")
        elif notnull and default is None:
            lname = name.lower()
            names.append(name)
            if "at" in lname[-2:] or "date" in lname or "time" in lname:
                makers.append(lambda i: now)
            elif "INT" in (ctype or "").upper() or "BOOL" in (ctype or "").upper():
                makers.append(lambda i: 0)
            else:
                makers.append(lambda i, n=name: f"bench-{n}-{i}")
    sql = 'INSERT OR IGNORE INTO "users" ({}) VALUES ({})'.format(
        ", ".join(f'"{n}"' for n in names), ", ".join("?" for _ in names))
    conn.executemany(sql, ([m(i) for m in makers] for i in range(count)))
    conn.commit()
    have = conn.execute("SELECT COUNT(*) FROM users WHERE id LIKE 'bench-u%'").fetchone()[0]
    conn.close()
    if have < count:
        raise RuntimeError(f"only {have} of {count} bench users in {db}")


class BenchDatabase:
    """A PostgreSQL database of its own for the run (`fonana_bench_<hex>`): the tests'
    throw-away database (tests/support/db.py's TestDatabase: the project's schema,
    fonana_realtime/store/schema/postgres.sql) and the bench users; dropped at the end."""

    def __init__(self, admin_url=PG_ADMIN_URL):
        from support.db import TestDatabase
        self.db = TestDatabase(admin_url, prefix="fonana_bench_")
        self.admin_url, self.name, self.url = admin_url, self.db.name, self.db.url
        self.created = False

    def create(self, users: int):
        import psycopg2
        self.db.create()
        self.created = True
        conn = psycopg2.connect(self.url, connect_timeout=5)
        try:
            with conn, conn.cursor() as cur:
                # users who never connected and have no notifications, as in the SQLite storm
                cur.execute("""INSERT INTO "users" ("id", "wallet", "updatedAt")
                               SELECT 'bench-u' || i, 'bench-wallet-' || i, now() AT TIME ZONE 'utc'
                               FROM generate_series(0, %s - 1) AS i""", (users,))
                cur.execute('ANALYZE "users"')
        finally:
            conn.close()
        return self

    def drop(self):
        if self.created:
            self.db.drop()
            self.created = False

    def backend_pids(self) -> list[int]:
        """The server's connections to this database (their CPU is the database's share)."""
        import psycopg2
        conn = psycopg2.connect(self.admin_url, connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                            (self.name,))
                return [r[0] for r in cur.fetchall()]
        finally:
            conn.close()


def backend_cpu(ctx) -> dict[int, float]:
    """CPU seconds so far of each backend serving the bench database."""
    if ctx.pg is None:
        return {}
    try:
        pids = ctx.pg.backend_pids()
    except Exception:
        return {}
    return {pid: sum(cpu_split([pid])) for pid in pids}


def snapshot_server(ctx):
    """Copy our server's source into the work dir and run it from there: the working tree
    may change under a long run (others keep working on it), and every repetition must
    measure the same code. Returns a description of the version measured."""
    dest = ctx.work / "server"
    dest.mkdir()
    shutil.copytree(ROOT / "fonana_realtime", dest / "fonana_realtime",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("wsgi.py", "gunicorn.conf.py"):
        shutil.copy2(ROOT / name, dest / name)
    ctx.server_src = dest

    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "fonana_realtime", "wsgi.py", "gunicorn.conf.py")
    if not dirty:
        return f"commit {head}"
    import hashlib
    diff = git("diff", "HEAD", "--", "fonana_realtime", "wsgi.py", "gunicorn.conf.py")
    files = len(dirty.splitlines())
    return (f"commit {head} plus uncommitted changes in {files} file(s) "
            f"(diff sha1 {hashlib.sha1(diff.encode()).hexdigest()[:10]})")


# ---------------------------------------------------------------------------
# servers


class Server:
    """One server under test, pinned to SERVER_CPU, logs in the work dir."""

    def __init__(self, kind, ctx, redis_url=None, label=None):
        self.kind, self.ctx, self.redis_url = kind, ctx, redis_url
        self.label = label or kind
        self.port = free_port()
        self.proc = None
        self.pids = []
        ctx.instances += 1
        self.logfile = ctx.work / f"{self.label}-{ctx.instances}.log"
        self.workers = 1
        self.pin = SERVER_CPU           # None: not pinned (the two-worker storm)
        self.extra_env = {}
        self.db = "sqlite"              # ours: "postgresql" runs it on the bench database

    def command_env(self):
        ctx = self.ctx
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("WS_", "REDIS_", "DATABASE_", "JWT_", "NEXTAUTH_", "API_", "PROMETHEUS_"))}
        env.update(WS_HOST=HOST, WS_PORT=str(self.port), JWT_SECRET=ctx.jwt_secret, WS_API_SECRET=ctx.api_key)
        if self.kind == "reference":
            env.update(getattr(self, "extra_env", {}))
            return ["node", str(REFERENCE / "server.js")], env, REFERENCE
        metrics = ctx.work / f"metrics-{ctx.instances}"
        metrics.mkdir()
        (ctx.work / f"logs-{ctx.instances}").mkdir()
        env.update(
            WS_WORKERS=str(self.workers), DATA_DIR=str(ctx.data_dir), LOG_DIR=str(ctx.work / f"logs-{ctx.instances}"),
            DATABASE_URL=self.ctx.pg.url if self.db == "postgresql" else "", NEXTAUTH_SECRET="",
            REDIS_URL=self.redis_url or "",
            # the bench's own settings: one client IP opens thousands of connections,
            # and 10,000 subscribers plus the publishers exceed the default 10,000
            WS_HANDSHAKES_PER_IP_PER_SEC="0", WS_WORKER_CONNECTIONS="12000", WS_DRAIN_SECONDS="1",
            # the load generator's clients are legacy connections and must see every event
            # (its seq bitmap): raw fan-out with pacing off, as the reference does it;
            # bench/legacy_pacing.py measures pacing on against off
            WS_LEGACY_TYPE_GAP_MS="0",
            PROMETHEUS_MULTIPROC_DIR=str(metrics),
        )
        if self.redis_url:
            env["REDIS_PREFIX"] = f"fonana:bench:{secrets.token_hex(4)}:"
        env.update(self.extra_env)
        return [str(VENV / "bin" / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], env, ctx.server_src

    def start(self, timeout=30):
        cmd, env, cwd = self.command_env()
        if self.pin is not None:
            cmd = ["taskset", "-c", str(self.pin)] + cmd
        if self.ctx.nice:
            cmd = ["nice", "-n", str(self.ctx.nice)] + cmd
        self.out = open(self.logfile, "w")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode} at start; see {self.logfile}")
            status, _ = http_get(self.port, "/health", 1.0)
            if status == 200:
                break
            time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"{self.label} did not answer /health within {timeout} s; see {self.logfile}")
        self.refresh_pids()
        return self

    def refresh_pids(self):
        self.pids = process_tree(self.proc.pid) + list(self.ctx.extra_server_pids if self.redis_url else [])
        return self.pids

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss(self):
        return rss_kib(process_tree(self.proc.pid))

    def stop(self):
        if not self.proc:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.out.close()


class Redis:
    def __init__(self, ctx):
        self.port = free_port()
        self.proc = None
        self.ctx = ctx

    def start(self):
        if not shutil.which("redis-server"):
            return None
        cmd = ["taskset", "-c", str(SERVER_CPU), "redis-server", "--port", str(self.port), "--bind", HOST,
               "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen(cmd, stdout=open(self.ctx.work / "redis.log", "w"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        for _ in range(50):
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return f"redis://{HOST}:{self.port}/0"
            except OSError:
                time.sleep(0.1)
        return None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---------------------------------------------------------------------------
# the load generator


class RunFailed(Exception):
    pass


def loadgen(ctx, server, plan, *, tokens, channel, deadline, on_wait=None, inflight=200, window=4, extra=()):
    cmd = [str(LOADGEN), "--port", str(server.port), "--tokens", str(tokens), "--plan", plan,
           "--channel", channel, "--post", POST_ID, "--api-secret", ctx.api_key,
           "--server-pids", ",".join(map(str, server.refresh_pids())),
           "--server-cpu", str(SERVER_CPU), "--gen-cpu", str(GEN_CPU),
           "--inflight", str(inflight), "--window", str(window), "--publishers", "2",
           "--warmup", str(ctx.p["warmup"]), "--deadline", str(deadline), *extra]
    cmd = ["taskset", "-c", str(GEN_CPU)] + cmd
    if ctx.nice:
        cmd = ["nice", "-n", str(ctx.nice)] + cmd
    ctx.gen_runs += 1
    errlog = ctx.work / f"loadgen-{ctx.gen_runs}.log"
    with open(errlog, "w") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        killer = threading.Timer(deadline + 30, proc.kill)
        killer.start()
        steps, result = [], None
        try:
            for line in proc.stdout:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if obj.get("event") == "step":
                    steps.append(obj)
                elif obj.get("event") == "wait":
                    verdict = on_wait(obj) if on_wait else "STOP"
                    proc.stdin.write(verdict + "\n")
                    proc.stdin.flush()
                elif obj.get("event") == "result":
                    result = obj
            proc.wait(timeout=30)
        finally:
            killer.cancel()
            if proc.poll() is None:
                proc.kill()
    if result is None or proc.returncode != 0 or not result.get("ok"):
        tail = errlog.read_text()[-1500:]
        errors = (result or {}).get("errors") or [tail or f"exit status {proc.returncode}"]
        raise RunFailed(f"{server.label}: plan {plan}: " + "; ".join(errors[:6]))
    if not server.alive():
        raise RunFailed(f"{server.label} died during plan {plan}; see {server.logfile}")
    return steps, result


# ---------------------------------------------------------------------------
# scenarios


def foreign(step):
    """Load on the server core that was not the server (other processes on the machine)."""
    if step.get("server_core_busy", -1) < 0 or step.get("server_util", -1) < 0:
        return None
    return max(0.0, step["server_core_busy"] - step["server_util"])


def run_idle(ctx, kind, rep):
    """RSS per idle connection at each size, on a fresh server."""
    sizes = ctx.p["idle"]
    srv = Server(kind, ctx).start()
    try:
        # warm-up: a few connections come and go, so lazy imports and first-use caches
        # are not charged to the idle connections
        loadgen(ctx, srv, "c20", tokens=ctx.tokens_storm, channel="notifications", deadline=30)
        time.sleep(1.0)
        base = srv.rss()
        plan = ",".join(f"c{n},w" for n in sizes)
        samples = {}

        def at_wait(obj):
            time.sleep(ctx.p["idle_settle"])
            samples[obj["clients"]] = srv.rss()
            return "NEXT"

        steps, res = loadgen(ctx, srv, plan, tokens=ctx.tokens_main, channel="notifications",
                             deadline=60 + sizes[-1] / 100, on_wait=at_wait)
        connects = [s for s in steps if s["kind"] == "connect"]
        for n, st in zip(sizes, connects):
            rss = samples.get(n)
            ctx.record(f"idle_{n}", kind, rep, {
                "rss_kib_per_conn": (rss - base) / n if rss else None,
                "rss_mib": rss / 1024 if rss else None, "base_mib": base / 1024,
                "connects_per_sec": st["per_sec"], "gen_us_per_connect": st["gen_us_per_connect"],
                "server_us_per_connect": st["server_us_per_connect"],
                "pmd": res["pmd_negotiated"] > 0, "compressed_frames": res["compressed_frames"],
            })
            log(f"  idle {n:>6}: {((rss - base) / n) if rss else float('nan'):7.2f} KiB/conn "
                f"(RSS {rss / 1024:.1f} MiB, base {base / 1024:.1f} MiB), connects {st['per_sec']:.0f}/s")
    finally:
        srv.stop()


def run_fanout_group(ctx, kind, rep):
    """Max-rate fan-out over the sweep, the fixed offered load, then the connect storm,
    all on one fresh server instance."""
    p = ctx.p
    sizes = p["sweep"]
    plan = []
    for n in sizes:
        plan += [f"c{n}", f"max:{p['max_seconds']}"]
        if n == p["fixed_n"]:
            plan.append(f"rate{p['fixed_deliveries'] / n:g}:{p['fixed_seconds']}")
    srv = Server(kind, ctx).start()
    try:
        steps, res = loadgen(ctx, srv, ",".join(plan), tokens=ctx.tokens_main, channel="post",
                             deadline=120 + sizes[-1] / 60 + len(sizes) * (p["max_seconds"] + 20) + p["fixed_seconds"])
        for st in steps:
            if st["kind"] != "publish":
                continue
            key = f"fanout_{st['subscribers']}" if st["rate"] == 0 else f"fixed_{st['subscribers']}"
            ctx.record(key, kind, rep, publish_metrics(st, res))
            log_publish(key, st)
        storm(ctx, srv, kind, rep)
    finally:
        srv.stop()


def databases(ctx, kind, rep):
    """The databases ours runs a storm/reconnect group on, in this repetition's order
    (alternating); the reference, which has none, runs once ("sqlite" names its row)."""
    if kind != "ours":
        return ["sqlite"]
    dbs = list(ctx.dbs)
    return dbs if rep % 2 == 0 else dbs[::-1]


def run_storm(ctx, kind, rep):
    """The connect storm alone, on a fresh server (a few warm-up clients first, so lazy
    imports are not charged to the storm), ours once per database. Optionally under
    py-spy (--profile DIR)."""
    for i, db in enumerate(databases(ctx, kind, rep)):
        if i:
            wait_quiet(ctx)
        srv = Server(kind, ctx, label=kind if db == "sqlite" else f"{kind}-pg")
        srv.db = db
        srv.start()
        try:
            loadgen(ctx, srv, "c20", tokens=ctx.tokens_main, channel="notifications", deadline=30)
            spy = None
            if kind == "ours" and ctx.args.profile:
                spy = start_profile(ctx, srv, f"{keyed('storm', db)}-{rep + 1}")
            before = cpu_split(srv.refresh_pids())
            backends = backend_cpu(ctx) if db == "postgresql" else {}
            storm(ctx, srv, kind, rep, db)
            after = cpu_split(srv.refresh_pids())
            stop_profile(spy)
            record = ctx.results[keyed("storm", db)][kind][rep]
            if db == "postgresql":
                # the database's CPU for the storm (its backends float over both cores)
                now = backend_cpu(ctx)
                spent = sum(now.values()) - sum(backends.get(pid, 0.0) for pid in now)
                record["db_us_per_connect"] = spent * 1e6 / ctx.p["storm_n"]
                log(f"  PostgreSQL backends: {spent:.2f} s CPU, {record['db_us_per_connect']:.0f} us per connect "
                    f"({len(now)} connections)")
            user, system = after[0] - before[0], after[1] - before[1]
            if user + system > 0:
                record["kernel_share"] = system / (user + system)
                log(f"  server CPU in the storm (whole run): user {user:.2f} s, kernel {system:.2f} s "
                    f"({system / (user + system):.0%} kernel)")
        finally:
            srv.stop()


def cpu_split(pids):
    """(user, system) CPU seconds of these processes."""
    tck = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / tck
        system += int(fields[12]) / tck
    return user, system


def socket_fds(pid) -> int:
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            except OSError:
                pass
    except OSError:
        pass
    return n


def run_storm_workers(ctx, rep):
    """The connect storm against ours with REDIS_URL, one worker and then two (the
    generator shares the two cores: the workers are not pinned to one core here, the
    generator is, on core 1). Records connects/s and how the connections split. With
    --profile, the one-worker storm runs under py-spy (storm2-1w-REP.txt)."""
    if not ctx.redis_url:
        ctx.skips.add("storm2: no private redis-server could be started")
        return
    p = ctx.p
    for workers in (1, 2):
        srv = Server("ours", ctx, redis_url=ctx.redis_url, label=f"ours+redis-{workers}w")
        srv.workers = workers
        srv.pin = None
        try:
            srv.start()
            wait_ready(srv.port)
            worker_pids = [pid for pid in children_of(srv.proc.pid)]
            loadgen(ctx, srv, f"c{20 * workers}", tokens=ctx.tokens_main, channel="notifications", deadline=30)
            time.sleep(1.0)
            base = {pid: socket_fds(pid) for pid in worker_pids}
            split = {}

            def at_wait(obj, split=split, base=base, worker_pids=worker_pids):
                split.update({pid: socket_fds(pid) - base[pid] for pid in worker_pids})
                return "NEXT"

            time.sleep(1.0)
            spy = start_profile(ctx, srv, f"storm2-{workers}w-{rep + 1}") if ctx.args.profile and workers == 1 else None
            before = cpu_split(worker_pids)
            try:
                steps, _ = loadgen(ctx, srv, f"c{p['storm_n']},w", tokens=ctx.tokens_storm, channel="notifications",
                                   deadline=90, inflight=p["storm_inflight"], on_wait=at_wait)
            finally:
                stop_profile(spy)
            after = cpu_split(worker_pids)
            user, system = after[0] - before[0], after[1] - before[1]
            kernel = system / (user + system) if user + system > 0 else None
            st = steps[0]
            shares = sorted((n / max(1, sum(split.values())) for n in split.values()), reverse=True)
            # Both cores' busy shares in the window: the two-worker storm is bound by the
            # machine once both are near 100 % (workers, Redis and the generator share them).
            ctx.record(f"storm_{workers}w", "ours", rep, {
                "connects_per_sec": st["per_sec"], "p99_ms": st["p99_ms"],
                "server_us_per_connect": st["server_us_per_connect"],
                "largest_share": shares[0] if shares else None, "split": list(split.values()),
                "core0_busy": st.get("server_core_busy"), "core1_busy": st.get("gen_core_busy"),
                "kernel_share": kernel,
            })
            log(f"  storm {p['storm_n']}/{p['storm_inflight']}, {workers} worker(s) with REDIS_URL: "
                f"{st['per_sec']:.0f} connects/s, p99 {st['p99_ms']:.1f} ms, connections per worker "
                f"{sorted(split.values(), reverse=True)}; workers {st['server_us_per_connect']:.0f} us per "
                f"connect ({kernel or 0:.0%} kernel), cores busy "
                f"{st.get('server_core_busy', -1):.0%} / {st.get('gen_core_busy', -1):.0%}")
        finally:
            srv.stop()


def run_presence(ctx, rep):
    """Presence's cost (issue 20): ours with REDIS_URL, one worker, WS_PRESENCE on and off
    (the order alternates per repetition): the connect storm (each connect notes the user's
    presence, each subscribe the channel's) and the maximum-rate fan-out to 1,000
    subscribers. The server's CPU includes Redis's (it is pinned to the server's core)."""
    if not ctx.redis_url:
        ctx.skips.add("presence: no private redis-server could be started")
        return
    p = ctx.p
    flags = ("1", "0") if rep % 2 == 0 else ("0", "1")
    for flag in flags:
        name = "on" if flag == "1" else "off"
        srv = Server("ours", ctx, redis_url=ctx.redis_url, label=f"ours+redis-presence-{name}")
        srv.extra_env = {"WS_PRESENCE": flag}
        try:
            srv.start()
            wait_ready(srv.port)
            loadgen(ctx, srv, "c20", tokens=ctx.tokens_main, channel="notifications", deadline=30)
            time.sleep(1.0)
            steps, _ = loadgen(ctx, srv, f"c{p['storm_n']}", tokens=ctx.tokens_storm, channel="notifications",
                               deadline=90, inflight=p["storm_inflight"])
            st = steps[0]
            steps, res = loadgen(ctx, srv, f"c1000,max:{p['max_seconds']}", tokens=ctx.tokens_main, channel="post",
                                 deadline=120 + p["max_seconds"] + 20)
            fan = [s for s in steps if s["kind"] == "publish"][0]
            ctx.record(f"presence_{name}", "ours", rep, {
                "connects_per_sec": st["per_sec"], "p99_ms": st["p99_ms"],
                "server_us_per_connect": st["server_us_per_connect"],
                "deliveries_per_sec": fan["deliveries_per_sec"],
                "server_us_per_delivery": fan["server_us_per_delivery"]})
            log(f"  presence {name}: storm {st['per_sec']:.0f} connects/s, server {st['server_us_per_connect']:.0f} "
                f"us/connect (with Redis); fan-out 1,000: {fan['deliveries_per_sec']:.0f} deliveries/s, "
                f"server {fan['server_us_per_delivery']:.2f} us/delivery")
        finally:
            srv.stop()


def start_profile(ctx, srv, name):
    """py-spy on the worker (pip install py-spy into .venv by hand; not a dependency)."""
    worker = [pid for pid in srv.refresh_pids() if pid != srv.proc.pid and pid not in ctx.extra_server_pids]
    out = Path(ctx.args.profile) / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(VENV / "bin" / "py-spy"), "record", "--pid", str(worker[-1]), "--rate", "1000", "--nonblocking",
           "--format", "raw", "--output", str(out), "--duration", "60"]
    proc = subprocess.Popen(["taskset", "-c", str(GEN_CPU)] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return proc


def stop_profile(proc):
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_reconnect(ctx, kind, rep):
    """A deploy's reconnect storm: 10,000 subscribed clients, the server lets them all go
    (ours: SIGHUP, gunicorn starts a new worker and the old one drains with
    WS_DRAIN_SECONDS=10; the reference: SIGHUP closes all with 1001 over 10 s, see
    server.js), every client reconnects at once (200 handshakes in flight, a 503 or a
    refused connect retried after 250 ms). Measured: first close → last re-subscribed.
    Ours once per database."""
    for i, db in enumerate(databases(ctx, kind, rep)):
        if i:
            wait_quiet(ctx)
        reconnect(ctx, kind, rep, db)


def reconnect(ctx, kind, rep, db):
    n = ctx.p["reconnect_n"]
    srv = Server(kind, ctx, label=kind if db == "sqlite" else f"{kind}-pg")
    srv.db = db
    srv.extra_env = {"WS_DRAIN_SECONDS": "10"} if kind == "ours" else {"REF_DRAIN_SECONDS": "10"}
    srv.start()
    try:
        def at_wait(obj):
            # the generator must be in its r step before the first 1001 arrives
            threading.Timer(0.5, os.kill, (srv.proc.pid, signal.SIGHUP)).start()
            return "NEXT"

        steps, _ = loadgen(ctx, srv, f"c{n},w,r", tokens=ctx.tokens_main, channel="notifications",
                           deadline=120 + n / 100, on_wait=at_wait)
        first = next(st for st in steps if st["kind"] == "connect")
        st = next(st for st in steps if st["kind"] == "reconnect")
        ctx.record(keyed("reconnect", db), kind, rep, {
            "seconds": st["seconds"], "p50_ms": st["p50_ms"], "p99_ms": st["p99_ms"], "retries": st["retries"],
            "first_connects_per_sec": first["per_sec"],
        }, also_pg=kind == "reference")
        log(f"  [{db}] {n:,} connect: {first['per_sec']:.0f}/s; drain → all {st['reconnected']:,} subscribed again in "
            f"{st['seconds']:.2f} s (close→subscribed p50 {st['p50_ms']:.0f} ms, p99 {st['p99_ms']:.0f} ms; "
            f"{st['retries']} retried handshakes)")
    finally:
        srv.stop()


def publish_metrics(st, res):
    return {
        "deliveries_per_sec": st["deliveries_per_sec"], "lat_p50_ms": st["lat_p50_ms"],
        "lat_p99_ms": st["lat_p99_ms"], "lat_max_ms": st["lat_max_ms"],
        "gen_us_per_delivery": st["gen_us_per_delivery"], "server_us_per_delivery": st["server_us_per_delivery"],
        "server_util": st["server_util"], "foreign_load": foreign(st), "late_sends": st["late_sends"],
        # deliveries per second of server CPU: what the server could do on a whole core;
        # unlike deliveries/s it does not move when something else takes the core
        "deliveries_per_cpu_s": 1e6 / st["server_us_per_delivery"] if st["server_us_per_delivery"] > 0 else None,
        "events": st["window_events"], "pmd": res["pmd_negotiated"] > 0, "compressed_frames": res["compressed_frames"],
    }


def log_publish(key, st):
    f = foreign(st)
    log(f"  {key:<14} {st['deliveries_per_sec']:>9.0f} deliveries/s  p50 {st['lat_p50_ms']:7.2f} ms  "
        f"p99 {st['lat_p99_ms']:7.2f} ms  | gen {st['gen_us_per_delivery']:.2f} us/delivery, "
        f"server {st['server_us_per_delivery']:.2f} us/delivery, server busy {st['server_util']:.0%}"
        + (f", OTHER LOAD on its core {f:.0%}" if f is not None and f > 0.1 else ""))


def storm(ctx, srv, kind, rep, db="sqlite"):
    p = ctx.p
    time.sleep(1.0)
    steps, res = loadgen(ctx, srv, f"c{p['storm_n']}", tokens=ctx.tokens_storm, channel="notifications",
                         deadline=90, inflight=p["storm_inflight"])
    st = steps[0]
    other = None                        # the server core's busy share that was not the server
    if st.get("server_core_busy", -1) >= 0 and st["seconds"] > 0:
        other = max(0.0, st["server_core_busy"] - st["server_cpu_s"] / st["seconds"])
    ctx.record(keyed("storm", db), kind, rep, {
        "connects_per_sec": st["per_sec"], "p50_ms": st["p50_ms"], "p99_ms": st["p99_ms"],
        "gen_us_per_connect": st["gen_us_per_connect"], "server_us_per_connect": st["server_us_per_connect"],
        "connects_per_cpu_s": 1e6 / st["server_us_per_connect"] if st["server_us_per_connect"] > 0 else None,
        "foreign_load": other,
    }, also_pg=kind == "reference")
    log(f"  [{db}] storm {p['storm_n']}/{p['storm_inflight']}: {st['per_sec']:.0f} connects/s, p50 {st['p50_ms']:.1f} ms, "
        f"p99 {st['p99_ms']:.1f} ms | gen {st['gen_us_per_connect']:.0f} us/connect, "
        f"server {st['server_us_per_connect']:.0f} us/connect"
        + (f", OTHER LOAD on its core {other:.0%}" if other is not None else ""))


def run_redis(ctx, rep):
    if not ctx.redis_url:
        ctx.skips.add("redis: no private redis-server could be started")
        return
    p = ctx.p
    srv = Server("ours", ctx, redis_url=ctx.redis_url, label="ours+redis")
    try:
        srv.start()
    except RuntimeError as exc:
        ctx.skips.add(f"redis: our server did not start with REDIS_URL ({exc})")
        return
    try:
        status, body = wait_ready(srv.port)
        if status != 200:
            ctx.skips.add(f"redis: /ready answered {status} {body[:120]!r} with REDIS_URL")
            log(f"  SKIPPED: /ready answered {status} with REDIS_URL")
            return
        plan = ",".join(f"c{n},max:{p['max_seconds']}" for n in p["redis"])
        steps, res = loadgen(ctx, srv, plan, tokens=ctx.tokens_main, channel="post",
                             deadline=120 + p["redis"][-1] / 60 + len(p["redis"]) * (p["max_seconds"] + 20))
        for st in steps:
            if st["kind"] == "publish":
                key = f"redis_{st['subscribers']}"
                ctx.record(key, "ours", rep, publish_metrics(st, res))
                log_publish(key, st)
    finally:
        srv.stop()


def selftest(ctx):
    """Prove the generator on the reference: plain and compressed frames (with and without
    context takeover) are counted exactly, and a bad token, a dropped delivery and a
    duplicated one each fail the run."""
    ok = True
    bad = ctx.work / "tokens-bad.txt"
    lines = ctx.tokens_main.read_text().splitlines()[:50]
    bad.write_text("\n".join(lines[:49] + [lines[49].rsplit(".", 1)[0] + ".forged"]) + "\n")
    cases = [  # (name, reference env, tokens, expect ok, check)
        ("uncompressed", {}, ctx.tokens_main, True, lambda r: r["pmd_negotiated"] == 0 and r["compressed_frames"] == 0),
        ("deflate, context takeover", {"REF_PERMESSAGE_DEFLATE": "1"}, ctx.tokens_main, True,
         lambda r: r["pmd_negotiated"] == 200 and r["compressed_frames"] >= r["deliveries"]),
        ("deflate, no context takeover", {"REF_PERMESSAGE_DEFLATE": "no-context"}, ctx.tokens_main, True,
         lambda r: r["pmd_negotiated"] == 200 and r["compressed_frames"] >= r["deliveries"]),
        ("forged token", {}, bad, False, lambda e: "HTTP 401" in e),
        ("dropped delivery", {"REF_FAULT": "drop"}, ctx.tokens_main, False, lambda e: "missing" in e),
        ("duplicated delivery", {"REF_FAULT": "dup"}, ctx.tokens_main, False, lambda e: "duplicate" in e),
    ]
    for name, env, tokens, expect_ok, check in cases:
        srv = Server("reference", ctx, label="reference-selftest")
        srv.extra_env = env
        srv.start()
        n = 50 if tokens is bad else 200
        try:
            try:
                steps, res = loadgen(ctx, srv, f"c{n},max:1,rate20:1", tokens=tokens, channel="post", deadline=60,
                                     extra=("--drain", "2"))
                good = expect_ok and check(res)
                detail = f"{res['deliveries']} deliveries, {res['compressed_frames']} compressed, pmd {res['pmd_negotiated']}"
            except RunFailed as exc:
                good = not expect_ok and check(str(exc))
                detail = f"failed as it should: {str(exc)[:160]}" if good else f"unexpected failure: {exc}"
        finally:
            srv.stop()
        ok &= good
        log(f"  {'ok  ' if good else 'FAIL'} {name}: {detail}")
    return ok


# ---------------------------------------------------------------------------
# results


class Context:
    def __init__(self, args, profile):
        self.args = args
        self.p = dict(PROFILES[profile])
        if args.reps:
            self.p["reps"] = args.reps
        if getattr(args, "reconnect_clients", None):
            self.p["reconnect_n"] = args.reconnect_clients
        self.profile = profile
        self.nice = args.nice
        self.work = Path(tempfile.mkdtemp(prefix="fonana-bench-"))
        self.data_dir = self.work / "data"
        self.jwt_secret = secrets.token_urlsafe(32)
        self.api_key = secrets.token_urlsafe(24)
        self.tokens_main = self.work / "tokens-main.txt"
        self.tokens_storm = self.work / "tokens-storm.txt"
        self.instances = 0
        self.gen_runs = 0
        self.results: dict = {}      # key -> server -> rep -> metrics
        self.failures: list[str] = []
        self.skips: set[str] = set()
        self.background: list[dict] = []
        self.redis_url = None
        self.extra_server_pids: list[int] = []
        self.quiet_budget = 60.0
        self.server_src = ROOT
        self.server_version = "?"
        self.groups: set[str] = set()
        self.dbs: list[str] = ["sqlite"]
        self.pg: BenchDatabase | None = None
        self.data_dir.mkdir()

    def record(self, key, server, rep, metrics, also_pg=False):
        """`also_pg`: the reference's storm/reconnect (no database) is also the row its
        PostgreSQL counterpart is compared with."""
        self.results.setdefault(key, {}).setdefault(server, {})[rep] = metrics
        if also_pg and "postgresql" in self.dbs and key in ("storm", "reconnect"):
            self.results.setdefault(keyed(key, "postgresql"), {}).setdefault(server, {})[rep] = metrics

    def values(self, key, server, metric):
        reps = self.results.get(key, {}).get(server, {})
        return [m[metric] for _, m in sorted(reps.items()) if m.get(metric) is not None]


def summary(vals):
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def fmt(v, digits=None):
    if v is None:
        return "–"
    if digits is None:
        digits = 0 if abs(v) >= 1000 else (1 if abs(v) >= 100 else 2)
    return f"{v:,.{digits}f}"


def fmt_summary(s, digits=None):
    if s is None:
        return "–"
    med, lo, hi = s
    if lo == hi:
        return fmt(med, digits)
    return f"{fmt(med, digits)} [{fmt(lo, digits)}–{fmt(hi, digits)}]"


def ratio(a, b):
    if a is None or b is None or not b[0]:
        return None
    return a[0] / b[0]


ROWS = []  # filled by table_rows: (section, label, key, metric, unit, better, cost_metric)


def table_rows(ctx):
    p = ctx.p
    rows = []
    for n in p["idle"]:
        rows.append(("Idle connections", f"{n:,} idle, RSS per connection", f"idle_{n}", "rss_kib_per_conn",
                     "KiB", "lower", "gen_us_per_connect"))
    for n in p["headline"]:
        if n in p["sweep"]:
            rows.append(("Fan-out, maximum rate", f"{n:,} subscribers: deliveries/s", f"fanout_{n}",
                         "deliveries_per_sec", "/s", "higher", "gen_us_per_delivery"))
            rows.append(("Fan-out, maximum rate", f"{n:,} subscribers: deliveries per server CPU-second",
                         f"fanout_{n}", "deliveries_per_cpu_s", "/s", "higher", "gen_us_per_delivery"))
            rows.append(("Fan-out, maximum rate", f"{n:,} subscribers: publish→receive p50", f"fanout_{n}",
                         "lat_p50_ms", "ms", "lower", "gen_us_per_delivery"))
            rows.append(("Fan-out, maximum rate", f"{n:,} subscribers: publish→receive p99", f"fanout_{n}",
                         "lat_p99_ms", "ms", "lower", "gen_us_per_delivery"))
    n = p["fixed_n"]
    rows.append(("Fan-out, fixed offered load", f"{p['fixed_deliveries']:,} deliveries/s to {n:,}: p50", f"fixed_{n}",
                 "lat_p50_ms", "ms", "lower", "gen_us_per_delivery"))
    rows.append(("Fan-out, fixed offered load", f"{p['fixed_deliveries']:,} deliveries/s to {n:,}: p99", f"fixed_{n}",
                 "lat_p99_ms", "ms", "lower", "gen_us_per_delivery"))
    rows.append(("Connect storm", f"{p['storm_n']:,} clients, {p['storm_inflight']} in flight: connects/s", "storm",
                 "connects_per_sec", "/s", "higher", "gen_us_per_connect"))
    rows.append(("Connect storm", "connects per server CPU-second", "storm", "connects_per_cpu_s", "/s", "higher",
                 "gen_us_per_connect"))
    rows.append(("Connect storm", "connect→subscribed p99", "storm", "p99_ms", "ms", "lower", "gen_us_per_connect"))
    if "postgresql" in ctx.dbs:
        sec = "Connect storm, ours on PostgreSQL (the reference has no database)"
        rows.append((sec, f"{p['storm_n']:,} clients, {p['storm_inflight']} in flight: connects/s", "storm_pg",
                     "connects_per_sec", "/s", "higher", "gen_us_per_connect"))
        rows.append((sec, "connects per server CPU-second", "storm_pg", "connects_per_cpu_s", "/s", "higher",
                     "gen_us_per_connect"))
        rows.append((sec, "connect→subscribed p99", "storm_pg", "p99_ms", "ms", "lower", "gen_us_per_connect"))
        rows.append((sec, "PostgreSQL backends' CPU per connect", "storm_pg", "db_us_per_connect", "µs", "lower",
                     None))
    for w in (1, 2):
        rows.append(("Connect storm, REDIS_URL, workers not pinned (generator on core 1)",
                     f"{w} worker(s): connects/s", f"storm_{w}w", "connects_per_sec", "/s", "higher", None))
    rows.append(("Connect storm, REDIS_URL, workers not pinned (generator on core 1)",
                 "2 workers: the busiest worker's share of the connections", "storm_2w", "largest_share", "",
                 "lower", None))
    rows.append(("Reconnect after a drain (WS_DRAIN_SECONDS=10)",
                 f"{p['reconnect_n']:,} clients: first close → all subscribed again", "reconnect", "seconds", "s",
                 "lower", None))
    rows.append(("Reconnect after a drain (WS_DRAIN_SECONDS=10)", "close → subscribed again, p99", "reconnect",
                 "p99_ms", "ms", "lower", None))
    if "postgresql" in ctx.dbs:
        sec = "Reconnect after a drain (WS_DRAIN_SECONDS=10), ours on PostgreSQL"
        rows.append((sec, f"{p['reconnect_n']:,} clients: first close → all subscribed again", "reconnect_pg",
                     "seconds", "s", "lower", None))
        rows.append((sec, "close → subscribed again, p99", "reconnect_pg", "p99_ms", "ms", "lower", None))
    for n in p["sweep"]:
        rows.append(("Flatness (maximum rate)", f"{n:,} subscribers: deliveries/s", f"fanout_{n}",
                     "deliveries_per_sec", "/s", "higher", "gen_us_per_delivery"))
    for n in p["redis"]:
        rows.append(("Redis hop (ours, one worker, REDIS_URL set)", f"{n:,} subscribers: deliveries/s",
                     f"redis_{n}", "deliveries_per_sec", "/s", "higher", "gen_us_per_delivery"))
        rows.append(("Redis hop (ours, one worker, REDIS_URL set)", f"{n:,} subscribers: deliveries per CPU-second "
                     "(server + Redis)", f"redis_{n}", "deliveries_per_cpu_s", "/s", "higher", "gen_us_per_delivery"))
        rows.append(("Redis hop (ours, one worker, REDIS_URL set)", f"{n:,} subscribers: p99", f"redis_{n}",
                     "lat_p99_ms", "ms", "lower", "gen_us_per_delivery"))
    return rows


def cost_cell(ctx, key, cost_metric):
    """Generator and server CPU per delivery/connect, medians, for each server."""
    parts = []
    if cost_metric is None:
        return "–"
    server_metric = cost_metric.replace("gen_", "server_")
    for s in SERVERS:
        g = summary(ctx.values(key, s, cost_metric))
        v = summary(ctx.values(key, s, server_metric))
        if g:
            parts.append(f"{'ours' if s == 'ours' else 'ref'}: gen {fmt(g[0], 2 if g[0] < 100 else 0)} / srv {fmt(v[0] if v else None, 2 if (v and v[0] < 100) else 0)}")
    return "; ".join(parts) or "–"


def print_tables(ctx):
    rows = table_rows(ctx)
    log("\n" + "=" * 100)
    log(f"RESULTS ({ctx.p['reps']} repetition(s); median [min–max]; CPU in µs per delivery or per connect)")
    section = None
    for sec, label, key, metric, unit, _better, cost in rows:
        if sec != section:
            section = sec
            log(f"\n{sec}")
            log(f"  {'':<46} {'ours':>26} {'reference':>26} {'ours/ref':>9}   cpu (gen / server)")
        o = summary(ctx.values(key, "ours", metric))
        r = summary(ctx.values(key, "reference", metric))
        rt = ratio(o, r)
        log(f"  {label + ' (' + unit + ')':<46} {fmt_summary(o):>26} {fmt_summary(r):>26} "
            f"{(f'{rt:.2f}×' if rt else '–'):>9}   {cost_cell(ctx, key, cost)}")


def targets(ctx):
    """The issue's targets: (target, measured, verdict)."""
    p = ctx.p
    out = []

    def med(key, server, metric):
        s = summary(ctx.values(key, server, metric))
        return s[0] if s else None

    for n in p["headline"]:
        o, r = med(f"fanout_{n}", "ours", "deliveries_per_sec"), med(f"fanout_{n}", "reference", "deliveries_per_sec")
        oc, rc = med(f"fanout_{n}", "ours", "deliveries_per_cpu_s"), med(f"fanout_{n}", "reference", "deliveries_per_cpu_s")
        if o and r:
            x = o / r
            per_cpu = f"; per server CPU-second {oc / rc:.2f}×" if oc and rc else ""
            out.append((f"fan-out to {n:,}: ≥ 1.5× reference deliveries/s", f"{x:.2f}× ({fmt(o)} vs {fmt(r)}/s{per_cpu})",
                        "met" if x >= 1.5 else f"missed by {(1.5 - x) / 1.5:.0%} (needs 1.5×)"))
        else:
            out.append((f"fan-out to {n:,}: ≥ 1.5× reference deliveries/s", "not measured", "–"))
    n = p["fixed_n"]
    o, r = med(f"fixed_{n}", "ours", "lat_p99_ms"), med(f"fixed_{n}", "reference", "lat_p99_ms")
    if o is not None and r:
        out.append((f"p99 at {p['fixed_deliveries']:,} deliveries/s to {n:,} ≤ reference",
                    f"{o:.1f} ms vs {r:.1f} ms", "met" if o <= r else f"missed: {o / r:.2f}× the reference"))
    else:
        out.append((f"p99 at {p['fixed_deliveries']:,} deliveries/s ≤ reference", "not measured", "–"))
    o = med("idle_10000", "ours", "rss_kib_per_conn")
    if o is not None:
        out.append(("RSS per idle connection at 10,000 ≤ 20 KB", f"{o:.1f} KiB",
                    "met" if o <= 20 else f"missed by {o - 20:.1f} KiB ({(o - 20) / 20:.0%})"))
    else:
        out.append(("RSS per idle connection at 10,000 ≤ 20 KB", "not measured (--quick stops at 5,000)", "–"))
    o, r = med("storm", "ours", "connects_per_sec"), med("storm", "reference", "connects_per_sec")
    oc, rc = med("storm", "ours", "connects_per_cpu_s"), med("storm", "reference", "connects_per_cpu_s")
    if o and r:
        x = o / r
        per_cpu = f"; per server CPU-second {oc / rc:.2f}×" if oc and rc else ""
        out.append(("connect storm ≥ 0.9× reference connects/s", f"{x:.2f}× ({fmt(o)} vs {fmt(r)}/s{per_cpu})",
                    "met" if x >= 0.9 else f"missed by {(0.9 - x) / 0.9:.0%} (needs 0.9×)"))
    if o and r:
        x = o / r
        out.append(("issue 11: connect storm ≥ 0.6× reference connects/s (goal 0.9×)", f"{x:.2f}×",
                    "met" + (" (goal too)" if x >= 0.9 else "") if x >= 0.6 else f"missed by {(0.6 - x) / 0.6:.0%}"))
    op, rp = med("storm", "ours", "p99_ms"), med("storm", "reference", "p99_ms")
    if op and rp:
        out.append(("issue 11: connect→subscribed p99 ≤ 2× reference", f"{op / rp:.2f}× ({fmt(op)} vs {fmt(rp)} ms)",
                    "met" if op <= 2 * rp else f"missed by {(op / rp - 2) / 2:.0%}"))
    out += issue22_targets(med)
    one, two, share = med("storm_1w", "ours", "connects_per_sec"), med("storm_2w", "ours", "connects_per_sec"), \
        med("storm_2w", "ours", "largest_share")
    if one and two:
        x = two / one
        out.append(("issue 11: 2 workers ≥ 1.4× 1 worker connects/s", f"{x:.2f}× ({fmt(two)} vs {fmt(one)}/s)",
                    "met" if x >= 1.4 else f"missed by {(1.4 - x) / 1.4:.0%}"))
    if share:
        out.append(("issue 11: split between 2 workers no worse than 60/40", f"busiest {share:.0%}",
                    "met" if share <= 0.6 else "missed"))
    for n in p["redis"]:
        o, r = med(f"redis_{n}", "ours", "deliveries_per_sec"), med(f"fanout_{n}", "ours", "deliveries_per_sec")
        oc, rc = med(f"redis_{n}", "ours", "deliveries_per_cpu_s"), med(f"fanout_{n}", "ours", "deliveries_per_cpu_s")
        label = f"Redis hop at {n:,}: ≥ 0.8× in-process deliveries/s"
        if o and r:
            x = o / r
            per_cpu = f"; per server CPU-second {oc / rc:.2f}×" if oc and rc else ""
            out.append((label, f"{x:.2f}× ({fmt(o)} vs {fmt(r)}/s{per_cpu})",
                        "met" if x >= 0.8 else f"missed by {(0.8 - x) / 0.8:.0%} (needs 0.8×)"))
        else:
            out.append((label, "not measured" + (" (skipped)" if ctx.skips else ""), "–"))
    vals = {n: med(f"fanout_{n}", "ours", "deliveries_per_sec") for n in p["sweep"]}
    if all(vals.values()) and len(vals) > 1:
        lo, hi = min(vals.values()), max(vals.values())
        sweep = f"{min(vals):,}→{max(vals):,}"
        out.append((f"deliveries/s flat within 25 % over {sweep} subscribers", f"lowest {lo / hi:.0%} of highest",
                    "met" if lo / hi >= 0.75 else f"missed: {1 - lo / hi:.0%} drop"))
    return out


def issue22_targets(med):
    """Issue 22: the connect path on PostgreSQL (and SQLite no worse than before it)."""
    out = []
    o, r = med("storm_pg", "ours", "connects_per_sec"), med("storm_pg", "reference", "connects_per_sec")
    oc, rc = med("storm_pg", "ours", "connects_per_cpu_s"), med("storm_pg", "reference", "connects_per_cpu_s")
    if o and r:
        x = o / r
        per_cpu = f"; per server CPU-second {oc / rc:.2f}×" if oc and rc else ""
        out.append(("issue 22: storm on PostgreSQL ≥ 0.9× reference connects/s (goal 1.0×)",
                    f"{x:.2f}× ({fmt(o)} vs {fmt(r)}/s{per_cpu})",
                    ("met" + (" (goal too)" if x >= 1.0 else "")) if x >= 0.9 else f"missed by {(0.9 - x) / 0.9:.0%}"))
    op, rp = med("storm_pg", "ours", "p99_ms"), med("storm_pg", "reference", "p99_ms")
    if op and rp:
        x = op / rp
        out.append(("issue 22: storm on PostgreSQL, connect→subscribed p99 ≤ 1.5× reference",
                    f"{x:.2f}× ({fmt(op)} vs {fmt(rp)} ms)", "met" if x <= 1.5 else f"missed by {(x - 1.5) / 1.5:.0%}"))
    o, r = med("storm", "ours", "connects_per_sec"), med("storm", "reference", "connects_per_sec")
    if o and r:
        x = o / r
        out.append(("issue 22: storm on SQLite no worse than before (0.83× reference connects/s)", f"{x:.2f}×",
                    "met" if x >= 0.83 else f"below 0.83× by {(0.83 - x) / 0.83:.0%}"))
    op, rp = med("reconnect_pg", "ours", "p99_ms"), med("reconnect_pg", "reference", "p99_ms")
    if op and rp:
        x = op / rp
        out.append(("issue 22: reconnect after a drain on PostgreSQL, close→subscribed p99 ≤ 3× reference",
                    f"{x:.2f}× ({fmt(op)} vs {fmt(rp)} ms)", "met" if x <= 3 else f"missed by {(x - 3) / 3:.0%}"))
    return out


def markdown(ctx, info, elapsed, only=None):
    """The generated part of docs/BENCHMARKS.md; `only` (a partial run's --only): a section of
    its own holding just the rows and targets that run measured, headings a level down."""
    command = f"bench/run{' --quick' if ctx.profile == 'quick' else ''}{f' --only {only}' if only else ''}"
    lines = [
        f"# Benchmarks{f': `{command}`' if only else ''}",
        "",
        f"Generated by `{command}` on {info['date']} "
        f"({ctx.p['reps']} repetition(s), {elapsed / 60:.1f} minutes). What each scenario measures and how the "
        "load generator stays out of the way: [bench/README.md](../bench/README.md).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {info.get('Model name', '?')}, {info.get('CPU(s)', '?')} cores"
        + (f" ({info['Hypervisor vendor']} guest)" if info.get("Hypervisor vendor") else "") + " |",
        f"| memory | {info.get('memory', '?')} |",
        f"| kernel | {info['kernel']} |",
        f"| ours | Python {info['python']}, gunicorn {info['gunicorn']}, gevent {info['gevent']}, "
        f"gunicorn-h1c {info['gunicorn-h1c']}, wsproto {info['wsproto']}, Flask {info['Flask']}; one gevent worker; "
        f"{ctx.server_version} |",
        f"| reference | Node {info['node']}, ws {info['ws']} (bench/reference/server.js) |",
        f"| pinning | server (and Redis) on core {SERVER_CPU}, load generator on core {GEN_CPU}"
        + (f"; both under `nice -n {ctx.nice}`" if ctx.nice else "") + " |",
        "",
        "## Results",
        "",
        "Median over the repetitions, [min–max] when they differ. *cpu* is the CPU time per delivery "
        "(fan-out rows, µs) or per connect (idle and storm rows, µs) of the load generator (*gen*) and of "
        "the server (*srv*) in the same window, for each server: the generator must stay well below the server.",
        "",
    ]
    section = None
    for sec, label, key, metric, unit, better, cost in table_rows(ctx):
        if only and not (ctx.values(key, "ours", metric) or ctx.values(key, "reference", metric)):
            continue                        # not measured by this partial run
        if sec != section:
            if section is not None:
                lines.append("")
            section = sec
            lines += [f"### {sec}", "", "| | ours | reference | ours/ref | cpu µs (gen / srv) |", "|---|---|---|---|---|"]
        o = summary(ctx.values(key, "ours", metric))
        r = summary(ctx.values(key, "reference", metric))
        rt = ratio(o, r)
        lines.append(f"| {label} ({unit}, {better} is better) | {fmt_summary(o)} | {fmt_summary(r)} | "
                     f"{f'{rt:.2f}×' if rt else '–'} | {cost_cell(ctx, key, cost)} |")
    lines += ["", "## Targets (issue 5)", "", "| target | measured | verdict |", "|---|---|---|"]
    for t, m, v in targets(ctx):
        if not (only and m.startswith("not measured")):
            lines.append(f"| {t} | {m} | {v} |")
    lines.append("")
    loads = [f for key in ctx.results for s in ctx.results[key] for m in ctx.results[key][s].values()
             if (f := m.get("foreign_load")) is not None]
    if loads:
        lines += [f"Other load on the server's core during the fan-out and storm windows (processes not under test): "
                  f"median {statistics.median(loads):.0%}, max {max(loads):.0%}.", ""]
    if ctx.failures:
        lines += ["## Failed runs", ""] + [f"- {f}" for f in ctx.failures] + [""]
    if ctx.skips:
        lines += ["## Skipped", ""] + [f"- {s}" for s in sorted(ctx.skips)] + [""]
    if only:
        lines = ["#" + line if line.startswith("#") else line for line in lines]
    return "\n".join(lines)


def write_docs(ctx, md, only=None):
    """A full run rewrites what comes before the notes marker; a partial run (`only`) puts
    its section right after the marker, in place of the one the same --only wrote before."""
    old = DOCS.read_text() if DOCS.exists() else ""
    head, notes = (old[:old.index(NOTES_MARK)], old[old.index(NOTES_MARK) + len(NOTES_MARK):]) \
        if NOTES_MARK in old else (old, "\n")
    if only is None:
        head = md + "\n"
    else:
        begin, end = f"<!-- bench/run --only {only}: begin -->", f"<!-- bench/run --only {only}: end -->"
        if begin in notes and end in notes:         # exactly what an earlier run put there
            notes = notes[:notes.index(begin) - 1] + notes[notes.index(end) + len(end) + 1:]
        notes = f"\n{begin}\n\n{md.rstrip()}\n\n{end}\n" + notes
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(head + NOTES_MARK + notes)


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one repetition, smaller sizes, shorter windows")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    ap.add_argument("--servers", default="ours,reference", help="which servers (ours,reference)")
    ap.add_argument("--only", default="idle,fanout,redis,storm,storm2,reconnect,presence",
                    help="scenario groups (default: all of them): idle,fanout,redis,storm,storm2,reconnect,presence "
                    "(fanout includes the fixed load, the sweep and the connect storm, unless storm is "
                    "given: then the storm runs alone on a fresh server)")
    ap.add_argument("--profile", metavar="DIR", help="py-spy the worker during the storm group and storm2's one-worker storm (raw "
                    "collapsed stacks into DIR; py-spy must be in .venv)")
    ap.add_argument("--db", default=",".join(DATABASES),
                    help="our server's databases in the storm and reconnect groups (default both): sqlite,postgresql; "
                    "postgresql makes a bench database on FONANA_BENCH_PG_ADMIN_URL (default " + PG_ADMIN_URL + ")")
    ap.add_argument("--reconnect-clients", type=int, metavar="N",
                    help="clients in the reconnect group (default 10,000): fewer keep the drain's closes "
                    "under what a loaded machine serves, so the hand-over itself shows")
    ap.add_argument("--docs", dest="docs", action="store_true", default=None,
                    help="write docs/BENCHMARKS.md (default without --quick: a full run its tables, a partial run its own section after the notes marker)")
    ap.add_argument("--no-docs", dest="docs", action="store_false")
    ap.add_argument("--nice", type=int, default=0, help="run servers and generator under nice -n N (root: negative)")
    ap.add_argument("--quiet-wait", type=float, default=10,
                    help="seconds to wait for idle cores before each group (60 s in all)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, tokens)")
    ap.add_argument("--selftest", action="store_true",
                    help="only check the load generator against the reference (compressed frames, "
                         "forged token, dropped and duplicated deliveries must be caught); ~20 s")
    args = ap.parse_args()

    ctx = Context(args, "quick" if args.quick else "full")
    servers = [s for s in args.servers.split(",") if s in SERVERS]
    groups = ctx.groups = set(args.only.split(","))
    ctx.dbs = [d for d in DATABASES if d in args.db.split(",")] or ["sqlite"]
    full = groups >= {"idle", "fanout", "redis"}
    # a full run rewrites the tables of docs/BENCHMARKS.md, a partial one (not --quick) its own section
    write = args.docs if args.docs is not None else (not args.quick and set(servers) == set(SERVERS))
    t_start = time.time()
    nofile = raise_nofile()
    if args.selftest:
        build_loadgen()
        ensure_reference()
        mint_tokens(ctx.tokens_main, ctx.jwt_secret, 0, 1000)
        log("load generator self-test against the reference:")
        good = selftest(ctx)
        shutil.rmtree(ctx.work, ignore_errors=True)
        log("self-test " + ("passed" if good else "FAILED"))
        return 0 if good else 1
    if nofile < 12000:
        log(f"warning: open files limit is {nofile}; 10,000 connections need more")
    build_loadgen()
    if "reference" in servers:
        ensure_reference()
    info = machine_info()
    log(f"fonana-realtime benchmarks: {info.get('Model name', '?')}, {info.get('CPU(s)', '?')} cores, "
        f"kernel {info['kernel']}, Python {info['python']}, Node {info['node']}; work dir {ctx.work}")
    log(f"profile {ctx.profile}: {ctx.p['reps']} repetition(s); open files limit {nofile}")

    # tokens and the embedded database with the bench users
    mint_tokens(ctx.tokens_main, ctx.jwt_secret, 0, STORM_FIRST)
    mint_tokens(ctx.tokens_storm, ctx.jwt_secret, STORM_FIRST, USERS - STORM_FIRST)
    redis = None
    try:
        if "ours" in servers:
            ctx.server_version = snapshot_server(ctx)
            log(f"our server: {ctx.server_version}, run from a copy in {ctx.server_src}")
            log("preparing the embedded database (first start seeds it, then the bench users are added)")
            first = Server("ours", ctx, label="ours-seed").start()
            first.stop()
            add_bench_users(ctx.data_dir / "fonana.sqlite3", USERS)
            if "postgresql" in ctx.dbs and groups & {"storm", "reconnect"}:
                try:
                    ctx.pg = BenchDatabase().create(USERS)
                    log(f"PostgreSQL bench database {ctx.pg.name} with {USERS:,} users")
                except Exception as exc:          # no server, no rights: the SQLite rows still run
                    ctx.pg = None
                    ctx.dbs = [d for d in ctx.dbs if d != "postgresql"]
                    ctx.skips.add(f"PostgreSQL rows: no bench database ({type(exc).__name__}: {str(exc)[:120]})")
            if groups & {"redis", "storm2", "presence"}:
                redis = Redis(ctx)
                ctx.redis_url = redis.start()
                if redis.proc:
                    ctx.extra_server_pids = [redis.proc.pid]
        for rep in range(ctx.p["reps"]):
            order = servers if rep % 2 == 0 else list(reversed(servers))
            for kind in order:
                for group, fn in (("idle", run_idle), ("fanout", run_fanout_group), ("storm", run_storm),
                                  ("reconnect", run_reconnect)):
                    if group not in groups:
                        continue
                    load = wait_quiet(ctx)
                    ctx.background.append(load)
                    log(f"\n[rep {rep + 1}/{ctx.p['reps']}] {kind}: {group}"
                        f"  (cores busy before: {load.get('cpu0', 0):.0%} / {load.get('cpu1', 0):.0%})")
                    try:
                        fn(ctx, kind, rep)
                    except (RunFailed, RuntimeError) as exc:
                        ctx.failures.append(f"rep {rep + 1}, {kind}, {group}: {exc}")
                        banner(f"FAILED: rep {rep + 1}, {kind}, {group}: {exc}")
            if "ours" in servers:
                # the scenarios only ours runs, against the private redis-server
                for group, label, title, fn in (
                        ("storm2", "storm2", "storm with 1 and 2 workers", run_storm_workers),
                        ("presence", "presence", "presence on and off", run_presence),
                        ("redis", "ours+redis", "one worker", run_redis)):
                    if group not in groups:
                        continue
                    wait_quiet(ctx)
                    log(f"\n[rep {rep + 1}/{ctx.p['reps']}] ours with REDIS_URL: {title}")
                    try:
                        fn(ctx, rep)
                    except (RunFailed, RuntimeError) as exc:
                        ctx.failures.append(f"rep {rep + 1}, {label}: {exc}")
                        banner(f"FAILED: rep {rep + 1}, {label}: {exc}")
    except KeyboardInterrupt:
        ctx.failures.append("interrupted")
    finally:
        if redis:
            redis.stop()
        if ctx.pg is not None:
            with contextlib.suppress(Exception):
                ctx.pg.drop()

    elapsed = time.time() - t_start
    print_tables(ctx)
    log("\nTargets (issue 5):")
    for t, m, v in targets(ctx):
        log(f"  {t:<58} {m:<40} {v}")
    for s in sorted(ctx.skips):
        log(f"SKIPPED: {s}")
    only = None if full else ",".join(g for g in args.only.split(",") if g)
    md = markdown(ctx, info, elapsed, only)
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{stamp}-{ctx.profile}.md").write_text(md + "\n")
    (RESULTS / f"{stamp}-{ctx.profile}.json").write_text(json.dumps(
        {"machine": info, "server_version": ctx.server_version, "profile": ctx.p, "results": ctx.results, "failures": ctx.failures,
         "skips": sorted(ctx.skips), "background": ctx.background}, indent=1, default=str))
    log(f"\nresults: {RESULTS / (stamp + '-' + ctx.profile)}.md/.json; {elapsed / 60:.1f} minutes")
    if write:
        write_docs(ctx, md, only)
        log(f"wrote {DOCS}")
    if ctx.failures:
        banner(f"{len(ctx.failures)} FAILED RUN(S): " + " | ".join(ctx.failures)[:1500])
    if not args.keep and not ctx.failures:
        shutil.rmtree(ctx.work, ignore_errors=True)
    else:
        log(f"work dir kept: {ctx.work}")
    return 1 if ctx.failures else 0


if __name__ == "__main__":
    sys.exit(main())
