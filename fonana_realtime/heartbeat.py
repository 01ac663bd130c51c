"""One greenlet per worker that keeps time for every connection: WebSocket pings,
dead peers, token expiry, and cutting close handshakes that never finish.

One sweep a second over all connections costs far less than a timer per connection
(a greenlet each would cost memory per idle client).
"""
from __future__ import annotations

import logging
import time

import gevent

from . import close_codes, error_codes
from .wsframes import ping_frame

log = logging.getLogger("fonana_realtime.heartbeat")
PING = ping_frame(b"")


def sweep(hub, settings, now_mono: float, now_wall: float):
    for conn in tuple(hub.connections):
        try:
            keep_time(conn, settings, now_mono, now_wall)
        except Exception:
            # A bug with one connection costs that connection (it reconnects), not the
            # pings, token expiries and close deadlines of every connection after it
            # in this sweep.
            log.exception("heartbeat failed for a connection; cutting it",
                          extra={"event": "heartbeat_error", "conn_id": getattr(conn, "id", None)})
            try:
                conn.abort()
            except Exception:
                log.exception("cutting it failed too", extra={"event": "heartbeat_error"})


def keep_time(conn, settings, now_mono: float, now_wall: float):
    """One connection's second: cut a close handshake past its deadline, end an expired
    token, drop a peer that did not answer the last ping, ping when due."""
    if conn.closed:
        return
    if conn.closing:
        if conn.close_deadline and now_mono >= conn.close_deadline:
            conn.abort()
        return
    if now_wall >= conn.expires_at + settings.jwt_leeway_seconds:
        conn.send_error(error_codes.TOKEN_EXPIRED)
        conn.close(close_codes.TOKEN_EXPIRED)
        return
    if now_mono >= conn.next_ping:
        if conn.awaiting_pong:          # no answer since the last ping: dead peer
            log.info("dead peer dropped", extra={"event": "ping_timeout", "conn_id": conn.id,
                                                  "user_id": conn.user_id})
            conn.abort()
            return
        conn.ping(PING, now_mono + settings.ping_interval)


def run(hub, settings, tick: float = 1.0):
    while True:
        gevent.sleep(min(tick, settings.ping_interval))
        try:
            sweep(hub, settings, time.monotonic(), time.time())
        except Exception:      # the heartbeat must outlive any one bad connection
            log.exception("heartbeat sweep failed", extra={"event": "heartbeat_error"})
