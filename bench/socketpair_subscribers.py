"""Legacy subscribers of one post channel over socketpairs, for the in-process fan-out
benchmarks (bench/inprocess_history_cost.py, bench/live_marks_cost.py, bench/delivery_instructions.py),
and their timed loop (`cpu_per_delivery`) with its alternating repetitions (`alternate`).

The writing end of each pair is a gevent socket behind a real `Connection` (1 MiB send
buffer, so a batch never parks in a backlog); the reading end is drained by the caller
between batches, as a client would read. `Connection` is passed in: the caller imports it
from the tree it measures.
"""
from __future__ import annotations

import socket
from types import SimpleNamespace

CHANNEL = "post_bench-post"
LIMITS = SimpleNamespace(ping_interval=3600.0, rate_burst=40, send_backlog_bytes=1 << 30,
                         send_backlog_frames=1 << 30)
PAYLOAD = b'{"type":"post_liked","postId":"bench-post","userId":"u1","likesCount":%d}'


def subscribe(n: int, joiner, connection_class) -> list:
    """`n` connections added and subscribed to CHANNEL through `joiner` (anything with
    `add(conn)` and `subscribe(conn, key)`: fanout, or the hub of older trees); returns
    the reading ends, non-blocking."""
    from gevent import socket as gsocket
    readers = []
    for i in range(n):
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        b.setblocking(False)
        conn = connection_class(gsocket.socket(fileno=a.detach()), None, f"u{i}", 0.0, "127.0.0.1", LIMITS)
        joiner.add(conn)
        joiner.subscribe(conn, CHANNEL)
        readers.append(b)
    return readers


def drain(readers) -> None:
    """Read everything written so far."""
    for r in readers:
        try:
            while r.recv(1 << 20):
                pass
        except BlockingIOError:
            pass


def cpu_per_delivery(broker, fanout, readers, events: int, batch: int, after_batch=None) -> float:
    """CPU seconds of this process per delivery: `events` published to CHANNEL in batches
    of `batch`, each written by the fanout (then `after_batch()`, if given, is timed too);
    the readers' draining between batches is not counted."""
    import time

    from fonana_realtime.events import Route
    route = Route(channels=(CHANNEL,))
    spent = 0.0
    for start in range(0, events, batch):
        t0 = time.process_time()
        for n in range(start, min(events, start + batch)):
            broker.publish(route, PAYLOAD % n)
        fanout._write_pending()
        if after_batch is not None:
            after_batch()
        spent += time.process_time() - t0
        drain(readers)
    return spent / (events * len(readers))


def alternate(measure, events: int, reps: int, batch: int) -> dict:
    """{True: [...], False: [...]}: `measure(on, events, batch)` for both settings, `reps`
    times, alternating which goes first (the machine's drift hits both alike)."""
    runs: dict = {True: [], False: []}
    for rep in range(reps):
        for on in ((True, False) if rep % 2 == 0 else (False, True)):
            runs[on].append(measure(on, events, batch))
    return runs
