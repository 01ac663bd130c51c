"""Graceful drain: what a worker does between SIGTERM and exiting.

`/ready` turns 503 at once and new WebSocket handshakes are refused (503), while
the listener stays open so HTTP event injection keeps working; connections are
closed with 1001 spread evenly over WS_DRAIN_SECONDS so clients do not all come
back at the same instant; then the worker lets gunicorn finish the exit.

On a reload (HUP) or when the master lowers the worker count (TTOU), other workers
accept on the same socket: the draining one then stops accepting instead
(`replaced_by_siblings`, gunicorn_worker), so reconnecting clients reach a live worker
at the first try instead of a 503, and its first close waits until another worker
answers (`sibling_answers`), so they do not wait for a worker still starting.
"""
from __future__ import annotations

import logging
import os
import socket
import time

import gevent

from . import close_codes

log = logging.getLogger("fonana_realtime.drain")

# Least seconds between batches of closes. Every client of a batch reconnects at once, and the
# last of them waits for the handshakes of all the others: batches of 3 instead of 15
# (3,000 clients over 10 s) took the reconnect's close→subscribed p50 from 9-11 to 4 ms and
# its p99 from 30-59 to 16-24 ms (PostgreSQL, 2 runs each; issue 22, docs/BENCHMARKS.md).
TICK = 0.01
LINGER = 6.0         # after the last 1001, how long clients get to answer before we stop
HANDOVER_WAIT = 5.0   # on a reload, longest wait for the new worker to answer before the closes (within graceful_timeout)


def replaced_by_siblings(listeners) -> bool:
    """Whether gunicorn's master still holds these listening sockets and has another
    worker: then new connections have somewhere to go. On a stop the master closes its
    listeners before it sends SIGTERM (gunicorn's `Arbiter.stop`); a worker killed on its
    own has no sibling. Read from /proc (Linux); anything unreadable answers False, and
    the worker goes on accepting and refusing handshakes with 503."""
    try:
        ours = {os.fstat(s.fileno()).st_ino for s in listeners}
        master = os.getppid()
        held = set()
        for fd in os.listdir(f"/proc/{master}/fd"):
            try:
                target = os.readlink(f"/proc/{master}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                held.add(int(target[8:-1]))
        children = set()
        for task in os.listdir(f"/proc/{master}/task"):
            with open(f"/proc/{master}/task/{task}/children") as f:
                children.update(int(pid) for pid in f.read().split())
    except (OSError, ValueError):
        return False
    return bool(ours) and ours <= held and bool(children - {os.getpid()})


def sibling_answers(listeners, timeout: float = HANDOVER_WAIT) -> bool:
    """Wait until another worker answers `GET /ready` on our listening socket (this one
    has stopped accepting, so whoever answers is a sibling); False after `timeout`.

    Why: on a reload gunicorn sends the old worker SIGTERM right after forking the new
    one, which then imports and builds its app (~1-1.5 s on the bench VM); every client
    closed meanwhile reconnected into the listen backlog and waited for it. Waiting for
    the answer first took the reconnect's close→subscribed p99 from 872-913 to 309-432 ms
    (3,000 clients on PostgreSQL, loaded VM; issue 22, docs/BENCHMARKS.md). One probe
    connection: the kernel holds it in the backlog until the new worker accepts it, so the
    answer comes the moment the new worker serves; `/ready` also opens its first database
    connection. Any answer will do (a 503 says the database is down: clients get that
    answer whether the closes wait or not)."""
    deadline = time.monotonic() + timeout
    for listener in listeners:
        family, address = listener.family, listener.getsockname()
        if family == socket.AF_INET and address[0] == "0.0.0.0":
            address = ("127.0.0.1", address[1])
        elif family == socket.AF_INET6 and address[0] == "::":
            address = ("::1", *address[1:])
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(max(0.0, deadline - time.monotonic()))
                probe.connect(address)
                probe.sendall(b"GET /ready HTTP/1.0\r\nHost: drain-probe\r\n\r\n")
                if probe.recv(16):          # any answer: a worker serves
                    return True
        except OSError:
            continue
    return False


def drain(runtime):
    """Close every connection with 1001 over the drain window; return when they are gone
    (or LINGER seconds after the last close frame went out)."""
    runtime.draining = True
    conns = sorted(runtime.hub.connections, key=lambda c: c.id)
    window = max(0.0, runtime.settings.drain_seconds)
    log.info("draining", extra={"event": "drain_start", "count": len(conns)})
    # The i-th of n closes is due at i/n of the window; each wake-up closes what is due,
    # then sleeps at least a TICK (so the window holds, however long a batch took).
    count, closed, began = len(conns), 0, time.monotonic()
    while closed < count:
        due = count if not window else min(count, int((time.monotonic() - began) * count / window) + 1)
        for conn in conns[closed:due]:
            conn.close(close_codes.GOING_AWAY)
        closed = due
        if closed < count:
            gevent.sleep(max(TICK, began + closed * window / count - time.monotonic()))
    deadline = time.monotonic() + LINGER
    while runtime.hub.connections and time.monotonic() < deadline:
        gevent.sleep(TICK)
    for conn in tuple(runtime.hub.connections):
        conn.abort()
    log.info("drained", extra={"event": "drain_done"})
