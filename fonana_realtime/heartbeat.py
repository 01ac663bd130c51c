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
    leeway = settings.jwt_leeway_seconds
    for conn in tuple(hub.connections):
        if conn.closed:
            continue
        if conn.closing:
            if conn.close_deadline and now_mono >= conn.close_deadline:
                conn.abort()
            continue
        if now_wall >= conn.expires_at + leeway:
            conn.send_error(error_codes.TOKEN_EXPIRED)
            conn.close(close_codes.TOKEN_EXPIRED)
            continue
        if now_mono >= conn.next_ping:
            if conn.awaiting_pong:          # no answer since the last ping: dead peer
                log.info("dead peer dropped", extra={"event": "ping_timeout", "conn_id": conn.id,
                                                      "user_id": conn.user_id})
                conn.abort()
                continue
            conn.ping(PING, now_mono + settings.ping_interval)


def run(hub, settings, tick: float = 1.0):
    while True:
        gevent.sleep(min(tick, settings.ping_interval))
        try:
            sweep(hub, settings, time.monotonic(), time.time())
        except Exception:      # the heartbeat must outlive any one bad connection
            log.exception("heartbeat sweep failed", extra={"event": "heartbeat_error"})
