"""What positions and history cost the fan-out, measured in process (issue 9: <= 15 %).

    .venv/bin/python bench/inprocess_history_cost.py [--subscribers 1000] [--events 2000] [--reps 7]

The real MemoryBroker + Fanout + Connection write path to `--subscribers` legacy
connections over real socketpairs (the kernel `send` is most of a delivery, as in
production), publishing `--events` events in batches of 1 and of 16. "history on" is the
server as it runs (offsets per stream, the last 100 events kept, the connections' marks (`streams.Streams`)
updated); "history off" is the same broker with WS_HISTORY_SIZE=0 and no positions (what
a broker without history does). Repetitions alternate on/off; medians of the CPU time
per delivery (time.process_time, this process only, the readers' draining excluded).
Much steadier than deliveries/s on a shared machine, which bench/run measures.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gevent  # noqa: E402

from fonana_realtime.broker.memory import MemoryBroker  # noqa: E402
from fonana_realtime.connection import Connection  # noqa: E402
from fonana_realtime.fanout import Fanout  # noqa: E402
from fonana_realtime.history import MemoryHistory  # noqa: E402
from fonana_realtime.hub import Hub  # noqa: E402

from socketpair_subscribers import alternate, cpu_per_delivery, subscribe  # noqa: E402  (bench/)


class NoPositions(MemoryBroker):
    """History off: no offsets, nothing kept (the base Broker's answers)."""

    def publish(self, route, payload):
        from fonana_realtime.wire import Message, route_topics
        self.on_message(Message(payload, route_topics(route), time.time()))
        return {}


def setup(n, history_on):
    broker = MemoryBroker(MemoryHistory(100, 300, 86400)) if history_on else NoPositions(MemoryHistory(0))
    fanout = Fanout(Hub(), broker)
    return broker, fanout, subscribe(n, fanout, Connection)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--same", action="store_true", help="A/A check: history on in both setups")
    args = ap.parse_args()
    setups = {on: setup(args.subscribers, on if not args.same else True) for on in (False, True)}
    gevent.sleep(0)
    for batch in (1, 16):
        runs = alternate(lambda on, events, b: cpu_per_delivery(*setups[on], events, b),
                         args.events // (1 if batch > 1 else 4), args.reps, batch)
        on, off = statistics.median(runs[True]), statistics.median(runs[False])
        print(f"batch {batch:2d}, {args.subscribers} subscribers: history on {on * 1e6:.3f} us/delivery, "
              f"off {off * 1e6:.3f} us/delivery -> history costs {(on / off - 1) * 100:+.1f} % "
              f"(runs on {[round(x * 1e6, 3) for x in runs[True]]}, off {[round(x * 1e6, 3) for x in runs[False]]})")


if __name__ == "__main__":
    main()
