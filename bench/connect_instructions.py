#!/usr/bin/env python3
"""User-space instructions per connect, counted by valgrind: the connect path's cost in a
figure that does not move with the machine's load (a connect storm's CPU per connect moved
by ±7 % between runs of one tree on the loaded 2-core VM; issue 23 asks for ±3 %).

    .venv/bin/python bench/connect_instructions.py --commits d27978b .      # a commit against this tree
    .venv/bin/python bench/connect_instructions.py --protocol fonana.v2 --commits d27978b .

For each tree (a commit, taken with `git archive`, or this working tree as `.`), one process
builds the real app (`create_app`: embedded SQLite store, in-process broker, pacing and
resume on, as `make run` has them) and runs CONNECTS clients one after another over
socketpairs, each as the storm's (bench/run) do: the WebSocket handshake with its token
goes through `web/websocket.handshake` (token verified, user checked, upgrade, Connection,
registration, welcome), the client subscribes to its own notifications and reads
`subscribed`, then closes; the server's read loop answers the close and unregisters it.
`valgrind --tool=callgrind` counts two such runs, CONNECTS_LOW and CONNECTS_HIGH; their
difference over (CONNECTS_HIGH - CONNECTS_LOW) is one connect, set-up excluded. What this
leaves out, the same for every tree: gunicorn's HTTP parsing, the kernel, and the
database's cold read (the user is one demo user, so after the first connect its check is
the user cache's). Needs valgrind (Debian: valgrind).
"""
from __future__ import annotations

import argparse
import statistics

from delivery_instructions import harness_dir, instructions, tree_of

CONNECTS_LOW, CONNECTS_HIGH = 20, 120

# Runs inside valgrind: argv = tree, bench dir, connects, protocol ("" for legacy).
HARNESS = r'''
import sys, tempfile
tree, bench, n, protocol = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else ""
sys.path[:0] = [tree, bench]
from gevent import monkey; monkey.patch_all()
import gevent
from socketpair_clients import close, connect, subscribe_notifications
from fonana_realtime.app import create_app
from fonana_realtime.auth import mint_token
from fonana_realtime.settings import load_settings
from fonana_realtime.store.demo import FAN
from fonana_realtime.web import websocket

secret = "bench-secret-" + "x" * 40
settings = load_settings({"DATA_DIR": tempfile.mkdtemp(), "JWT_SECRET": secret, "WS_API_SECRET": "k" * 40,
                          "WS_HANDSHAKES_PER_IP_PER_SEC": "100000", "WS_HANDSHAKES_PER_IP_BURST": "100000"})
app = create_app(settings)
rt = app.extensions["fonana_realtime"]
rt.start()
token = mint_token(FAN, secret)


def one():
    client = connect(websocket, app, rt, token, protocol)
    subscribe_notifications(client, FAN, b'"subscribed"')
    close(client)


for _ in range(n):
    one()
gevent.sleep(0.05)
assert not rt.hub.connections, "a connection was left registered"
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commits", nargs="+", default=["."], help="trees to measure: commits, or . for this working tree")
    ap.add_argument("--protocol", default="", help="the subprotocol to ask for (fonana.v2); legacy without")
    ap.add_argument("--reps", type=int, default=3, help="runs per tree, interleaved; the median is reported")
    args = ap.parse_args()
    with harness_dir(HARNESS) as (work, harness):
        trees = {commit: tree_of(commit, work) for commit in args.commits}
        runs: dict = {commit: [] for commit in args.commits}
        for _ in range(args.reps):
            for commit, tree in trees.items():
                low = instructions(harness, tree, CONNECTS_LOW, args.protocol)
                high = instructions(harness, tree, CONNECTS_HIGH, args.protocol)
                runs[commit].append((high - low) / (CONNECTS_HIGH - CONNECTS_LOW))
        base = statistics.median(runs[args.commits[0]])
        for commit, per in runs.items():
            median = statistics.median(per)
            print(f"{commit:>10}: instructions per {args.protocol or 'legacy'} connect, median of {len(per)}: "
                  f"{median:,.0f} [{min(per):,.0f}-{max(per):,.0f}] ({median / base - 1:+.1%} against "
                  f"{args.commits[0]})", flush=True)


if __name__ == "__main__":
    main()
