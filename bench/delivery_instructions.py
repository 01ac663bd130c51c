#!/usr/bin/env python3
"""User-space instructions per delivery, counted by valgrind: a fan-out figure that does
not move with the machine's load or the host's speed (issue 11: "fan-out no worse").

    .venv/bin/python bench/delivery_instructions.py                      # ddc8d64, 77f49c2, this tree
    .venv/bin/python bench/delivery_instructions.py --commits 77f49c2 --subscribers 200

For each tree (a commit, taken with `git archive`, or this working tree as `.`), one
process builds the in-process broker, the hub (and, where the tree has them, fanout and
the history) and SUBSCRIBERS legacy connections over socketpairs, then publishes events
to their post channel in batches of 1 and of 4, each batch written through the real
write path and drained by the reading ends. `valgrind --tool=callgrind` counts the
instructions of two such runs, EVENTS_LOW and EVENTS_HIGH events; their difference over
(EVENTS_HIGH - EVENTS_LOW) x SUBSCRIBERS is the cost of one delivery, set-up excluded.
The kernel's share of a `send` is not counted (valgrind sees user space only); reading the
sockets back is counted, the same for every tree. Needs valgrind (Debian: valgrind).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVENTS_LOW, EVENTS_HIGH = 20, 220

# Runs inside valgrind: argv = tree, bench dir, subscribers, events, batch.
HARNESS = r'''
import sys
tree, bench, n, events, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sys.path[:0] = [tree, bench]
from gevent import monkey; monkey.patch_all()
import gevent
from types import SimpleNamespace
from fonana_realtime.broker.memory import MemoryBroker
from fonana_realtime.connection import Connection
from fonana_realtime.events import Route
from fonana_realtime.hub import Hub
from socketpair_subscribers import CHANNEL, PAYLOAD, drain, subscribe
try:                                  # since issue 9: fanout joins hub and broker, history kept
    from fonana_realtime.fanout import Fanout
    from fonana_realtime.history import MemoryHistory
    broker = MemoryBroker(MemoryHistory(100, 300, 86400))
    joiner = Fanout(Hub(), broker)
    write = joiner._write_pending
except ImportError:                   # before: the broker holds the hub and writes batches
    hub = Hub()
    broker = MemoryBroker(hub)
    joiner = SimpleNamespace(add=hub.add, subscribe=hub.subscribe)
    write = broker._write_pending
readers = subscribe(n, joiner, Connection)
gevent.sleep(0)
route = Route(channels=(CHANNEL,))
for start in range(0, events, batch):
    for k in range(start, start + batch):
        broker.publish(route, PAYLOAD % k)
    write()
    drain(readers)
'''


def tree_of(commit: str, work: Path) -> Path:
    if commit == ".":
        return ROOT
    dest = work / commit
    dest.mkdir(parents=True)
    data = subprocess.run(["git", "archive", commit, "fonana_realtime"], cwd=ROOT, check=True,
                          capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=data, check=True)
    return dest


def instructions(harness: Path, tree: Path, *args) -> int:
    """Instructions valgrind counts for `harness` run on `tree` (argv: tree, bench dir, *args);
    bench/connect_instructions.py counts with it too. One hash seed for every run: with a
    random one, one tree's count moved by ±1.5 % between runs (dict and set layouts)."""
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                          str(harness), str(tree), str(ROOT / "bench"), *map(str, args)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or not found:
        raise SystemExit(f"valgrind run failed for {tree}:\n{out.stderr[-2000:]}")
    return int(found.group(1))


@contextmanager
def harness_dir(text: str):
    """A temporary folder holding the harness `text` (and the trees taken into it): yields
    (folder, harness path). Refuses without valgrind."""
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="fonana-instr-") as tmp:
        work = Path(tmp)
        harness = work / "harness.py"
        harness.write_text(text)
        yield work, harness


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commits", nargs="+", default=["ddc8d64", "77f49c2", "."],
                    help="trees to measure: commits, or . for this working tree")
    ap.add_argument("--subscribers", type=int, default=200)
    args = ap.parse_args()
    with harness_dir(HARNESS) as (work, harness):
        base = {}
        for commit in args.commits:
            tree = tree_of(commit, work)
            row = []
            for batch in (1, 4):
                low = instructions(harness, tree, args.subscribers, EVENTS_LOW * batch, batch)
                high = instructions(harness, tree, args.subscribers, EVENTS_HIGH * batch, batch)
                per = (high - low) / ((EVENTS_HIGH - EVENTS_LOW) * batch * args.subscribers)
                base.setdefault(batch, per)
                row.append(f"batch {batch}: {per:,.0f} ({per / base[batch] - 1:+.1%})")
            print(f"{commit:>10}: instructions per delivery, {'; '.join(row)} (against {args.commits[0]})",
                  flush=True)


if __name__ == "__main__":
    main()
