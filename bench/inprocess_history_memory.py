"""Memory held by the in-process history (PROTOCOL.md 7), measured with tracemalloc.

    .venv/bin/python bench/inprocess_history_memory.py [--payload 200] [--events 100]

Publishes through the real MemoryBroker + Fanout (no connections) so each held event
carries what it carries in production (its Message and the Outgoing with its legacy
frame), and prints bytes per idle stream (meta only: a channel someone subscribed to,
nobody published to) and per 1,000 active channels holding a full history.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fonana_realtime.broker.memory import MemoryBroker  # noqa: E402
from fonana_realtime.events import Route  # noqa: E402
from fonana_realtime.fanout import Fanout  # noqa: E402
from fonana_realtime.history import MemoryHistory  # noqa: E402
from fonana_realtime.hub import Hub  # noqa: E402


def measure(fn) -> int:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keep = fn()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keep
    return after - before


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--payload", type=int, default=200, help="bytes of each event's JSON (typical post_liked: ~110)")
    ap.add_argument("--events", type=int, default=100, help="events per active channel (WS_HISTORY_SIZE)")
    ap.add_argument("--idle", type=int, default=20_000, help="idle streams to measure")
    ap.add_argument("--active", type=int, default=1_000, help="active channels to measure")
    args = ap.parse_args()

    def idle():
        store = MemoryHistory(args.events, 300, 86400)
        for n in range(args.idle):
            store.position(f"post_idle{n:08d}")
        return store

    def active():
        broker = MemoryBroker(MemoryHistory(args.events, 300, 86400))
        fanout = Fanout(Hub(), broker)
        pad = "x" * max(0, args.payload - 60)
        for n in range(args.active):
            route = Route(channels=(f"post_active{n:08d}",))
            for i in range(args.events):
                broker.publish(route, b'{"type":"post_liked","postId":"p%08d","n":%d,"pad":"%s"}'
                               % (n, i, pad.encode()))
            fanout._write_pending()          # as the live path does: builds each Outgoing once
        return broker

    per_idle = measure(idle) / args.idle
    active_bytes = measure(active)
    per_event = active_bytes / (args.active * args.events)
    print(f"python {sys.version.split()[0]}; payload {args.payload} B; {args.events} events per active channel")
    print(f"idle stream (meta only):            {per_idle:8.0f} B per stream")
    print(f"1,000 active channels, full history: {active_bytes * 1000 / args.active / 1e6:8.1f} MB "
          f"({per_event:.0f} B per held event, {per_event - args.payload:.0f} B besides its payload)")


if __name__ == "__main__":
    main()
