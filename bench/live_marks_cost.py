"""What keeping live legacy connections' resume marks current in Redis costs the fan-out
(live_marks.py, issue 17), measured in process.

    .venv/bin/python bench/live_marks_cost.py [--subscribers 1000] [--events 2000] [--reps 7] [--redis redis://127.0.0.1:6379/0]

The real MemoryBroker + Fanout + Connection write path to `--subscribers` legacy
connections over real socketpairs (bench/socketpair_subscribers.py), publishing
`--events` events in batches of 1 and of 16, pacing off (every event moves every
connection's mark: the most the copy can cost; with pacing a connection's marks move at
most once per gap per type). "live on": each connection reports its moves
(`Connection.on_marks` = `LiveMarks.moved`) and after each batch the moves are written
to Redis as the worker's writer greenlet does (`LiveMarks.write`: one pipeline, HSET of
one field per connection); "live off": neither. CPU time of this process per delivery
(time.process_time: the wait for Redis is not counted, its client-side work is; the
readers' draining excluded), medians; repetitions alternate on/off. The bench's hash is
deleted at the end.
"""
from __future__ import annotations

import argparse
import functools
import secrets
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gevent  # noqa: E402
import redis  # noqa: E402

from fonana_realtime.broker.memory import MemoryBroker  # noqa: E402
from fonana_realtime.connection import Connection  # noqa: E402
from fonana_realtime.fanout import Fanout  # noqa: E402
from fonana_realtime.history import MemoryHistory  # noqa: E402
from fonana_realtime.hub import Hub  # noqa: E402
from fonana_realtime.live_marks import LiveMarks  # noqa: E402

from socketpair_subscribers import alternate, cpu_per_delivery, subscribe  # noqa: E402  (bench/)


def setup(n, live):
    broker = MemoryBroker(MemoryHistory(100, 300, 86400))
    fanout = Fanout(Hub(), broker)
    cls = functools.partial(Connection, on_marks=live.moved) if live is not None else Connection
    return broker, fanout, subscribe(n, fanout, cls), live


def measure(setups, on, events, batch):
    broker, fanout, readers, live = setups[on]

    def write_moves():                    # what the worker's writer greenlet does, timed
        moves, live._moves = live._moves, {}
        live.write(moves)
    return cpu_per_delivery(broker, fanout, readers, events, batch, write_moves if live is not None else None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    client = redis.Redis.from_url(args.redis)
    key = f"fonana:bench:{secrets.token_hex(4)}:live:bench:1"
    live = LiveMarks(client, key, 120)
    setups = {False: setup(args.subscribers, None), True: setup(args.subscribers, live)}
    gevent.sleep(0)
    try:
        for batch in (1, 16):
            runs = alternate(lambda on, events, b: measure(setups, on, events, b),
                             args.events // (1 if batch > 1 else 4), args.reps, batch)
            on, off = statistics.median(runs[True]), statistics.median(runs[False])
            print(f"batch {batch:2d}, {args.subscribers} subscribers: live marks on {on * 1e6:.3f} us/delivery, "
                  f"off {off * 1e6:.3f} us/delivery -> {(on / off - 1) * 100:+.1f} % "
                  f"(runs on {[round(x * 1e6, 3) for x in runs[True]]}, off {[round(x * 1e6, 3) for x in runs[False]]})")
    finally:
        client.delete(key)


if __name__ == "__main__":
    main()
