"""Graceful drain: what a worker does between SIGTERM and exiting.

`/ready` turns 503 at once and new WebSocket handshakes are refused (503), while
the listener stays open so HTTP event injection keeps working; connections are
closed with 1001 spread evenly over WS_DRAIN_SECONDS so clients do not all come
back at the same instant; then the worker lets gunicorn finish the exit.
"""
from __future__ import annotations

import logging
import math
import time

import gevent

from . import close_codes

log = logging.getLogger("fonana_realtime.drain")

TICK = 0.05          # seconds between batches of closes
LINGER = 6.0         # after the last 1001, how long clients get to answer before we stop


def drain(runtime):
    """Close every connection with 1001 over the drain window; return when they are gone
    (or LINGER seconds after the last close frame went out)."""
    runtime.draining = True
    conns = sorted(runtime.hub.connections, key=lambda c: c.id)
    window = max(0.0, runtime.settings.drain_seconds)
    log.info("draining", extra={"event": "drain_start", "count": len(conns)})
    ticks = max(1, int(window / TICK))
    per_tick = max(1, math.ceil(len(conns) / ticks))
    for start in range(0, len(conns), per_tick):
        for conn in conns[start:start + per_tick]:
            conn.close(close_codes.GOING_AWAY)
        if window:
            gevent.sleep(TICK)
    deadline = time.monotonic() + LINGER
    while runtime.hub.connections and time.monotonic() < deadline:
        gevent.sleep(TICK)
    for conn in tuple(runtime.hub.connections):
        conn.abort()
    log.info("drained", extra={"event": "drain_done"})
