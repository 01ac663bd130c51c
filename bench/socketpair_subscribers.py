"""Legacy subscribers of one post channel over socketpairs, for the in-process fan-out
benchmarks (bench/inprocess_history_cost.py, bench/delivery_instructions.py).

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
