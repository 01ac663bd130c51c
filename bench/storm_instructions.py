#!/usr/bin/env python3
"""User-space instructions per connect of the worker in a storm of fresh users, on SQLite or
PostgreSQL, counted by valgrind: the connect path's cost with many connects in flight at
once (what batcher.py gains from), in a figure that does not move with the machine's load
(issue 22; the storm's CPU per connect moved by ±30 % between runs on the shared VM).

    .venv/bin/python bench/storm_instructions.py --db postgresql --commits 76cf000 .
    .venv/bin/python bench/storm_instructions.py --db sqlite --commits 76cf000 .

For each tree (a commit, taken with `git archive`, or this working tree as `.`), one process
builds the real app (`create_app`: the store of `--db`, in-process broker, pacing and resume
on) and runs waves of WAVE clients at once over socketpairs, each a user nobody connected
before (its own token): the WebSocket handshake through `web/websocket.handshake` (token
verified, user looked up, upgrade, welcome), `subscribe` to its own notifications, reading
`subscribed` and `unread_notifications`, then a close. A wave's clients are started together,
so their lookups meet in the worker's loop as a storm's do. `valgrind --tool=callgrind`
counts two runs, WAVES_LOW and WAVES_HIGH waves; the difference over the connects between
them is one connect, set-up excluded. What this leaves out, the same for every tree:
gunicorn's HTTP parsing, the kernel, and the database server's own work (PostgreSQL's
backends are other processes: bench/run prints their CPU per connect). PostgreSQL: a bench
database made for the run (bench/run's `BenchDatabase`), dropped at the end.
"""
from __future__ import annotations

import argparse
import statistics

from delivery_instructions import harness_dir, instructions, tree_of
from run import BenchDatabase

WAVE = 50
WAVES_LOW, WAVES_HIGH = 1, 5
USERS = WAVE * WAVES_HIGH

# Runs inside valgrind: argv = tree, bench dir, waves, database URL ("" for SQLite).
HARNESS = r'''
import sys, os, tempfile
tree, bench, waves, database_url = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path[:0] = [tree, bench]
from gevent import monkey; monkey.patch_all()
import gevent
from socketpair_clients import close, connect, subscribe_notifications
from fonana_realtime.app import create_app
from fonana_realtime.auth import mint_token
from fonana_realtime.settings import load_settings
from fonana_realtime.web import websocket

WAVE = %d
secret = "bench-secret-" + "x" * 40
data_dir = tempfile.mkdtemp()
settings = load_settings({"DATA_DIR": data_dir, "JWT_SECRET": secret, "WS_API_SECRET": "k" * 40,
                          "DATABASE_URL": database_url,
                          "WS_HANDSHAKES_PER_IP_PER_SEC": "0", "WS_LEGACY_TYPE_GAP_MS": "0"})
app = create_app(settings)
rt = app.extensions["fonana_realtime"]
rt.start()
if not database_url:          # the embedded store: its bench users, as bench/run adds them
    from run import add_bench_users
    add_bench_users(os.path.join(data_dir, "fonana.sqlite3"), WAVE * waves)
users = [f"bench-u{i}" for i in range(WAVE * waves)]
tokens = {u: mint_token(u, secret) for u in users}


def one(user):
    client = connect(websocket, app, rt, tokens[user])
    subscribe_notifications(client, user, b'"unread_notifications"')
    close(client)


for wave in range(waves):
    gevent.joinall([gevent.spawn(one, u) for u in users[wave * WAVE:(wave + 1) * WAVE]], raise_error=True)
gevent.sleep(0.05)
assert not rt.hub.connections, "a connection was left registered"
''' % WAVE


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commits", nargs="+", default=["."], help="trees to measure: commits, or . for this working tree")
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="postgresql")
    ap.add_argument("--reps", type=int, default=3, help="runs per tree, interleaved; the median is reported")
    args = ap.parse_args()
    pg = BenchDatabase().create(USERS) if args.db == "postgresql" else None
    try:
        url = pg.url if pg else ""
        with harness_dir(HARNESS) as (work, harness):
            trees = {commit: tree_of(commit, work) for commit in args.commits}
            runs: dict = {commit: [] for commit in args.commits}
            for _ in range(args.reps):
                for commit, tree in trees.items():
                    low = instructions(harness, tree, WAVES_LOW, url)
                    high = instructions(harness, tree, WAVES_HIGH, url)
                    runs[commit].append((high - low) / ((WAVES_HIGH - WAVES_LOW) * WAVE))
            base = statistics.median(runs[args.commits[0]])
            for commit, per in runs.items():
                median = statistics.median(per)
                print(f"{commit:>10}: {args.db}, instructions per connect ({WAVE} at once, fresh users), median of "
                      f"{len(per)}: {median:,.0f} [{min(per):,.0f}-{max(per):,.0f}] ({median / base - 1:+.1%} "
                      f"against {args.commits[0]})", flush=True)
    finally:
        if pg is not None:
            pg.drop()


if __name__ == "__main__":
    main()
