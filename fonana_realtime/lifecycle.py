"""One client's life once its handshake passed every check (web/websocket.py): made,
registered, welcomed, read until it goes, then unregistered.

Legacy or v2 is decided here, once, when the connection is made: a legacy connection's
events are paced (PROTOCOL.md 8, pacing.py) and it resumes where a dropped one of its
user left off (resume.py); a v2 connection is told its user stream's position in the
welcome (PROTOCOL.md 7). Its `Streams` (streams.py) delivers the one way or the other.
"""
from __future__ import annotations

import logging
import os
import time

import gevent
from greenlet import greenlet

from . import close_codes, metrics
from .commands import iso_utc
from .connection import V2, Connection

log = logging.getLogger("fonana_realtime.lifecycle")

WELCOME = "Successfully connected to WebSocket server"


def serve(rt, sock, parser, head: bytes, subprotocol, identity, ip: str, started: float):
    """The upgraded socket becomes a registered, welcomed Connection; then the request ends.

    The client's life runs in a fresh, shallow greenlet holding only the socket, the
    wsproto frame parser and a Connection. Keeping the request greenlet instead would
    keep its whole stack alive per idle client (gunicorn's parser, environ, werkzeug
    objects): tens of KB each. `head` (the 101 answer) leads the connection's first
    write (the welcome, one send for both, or an event or close frame that gets there
    first while registering waits on Redis): nothing can be written ahead of it.
    """
    resume = rt.resume if subprotocol is None else None      # legacy with resume on
    live = resume.live if resume is not None else None
    conn = Connection(sock, parser, identity.user_id, identity.expires_at, ip, rt.settings,
                      protocol=subprotocol, on_marks=live.moved if live is not None else None,
                      on_left=live.left if live is not None else None,
                      pacer=rt.pacer if subprotocol is None else None, head=head,
                      issued_at=identity.issued_at)
    # where its dropped connections left off (may ask Redis), where it starts on its stream
    joined = resume.arrive(conn) if resume is not None else None
    rt.fanout.add(conn)             # waits (bounded) until the broker hears the user's topic
    metrics.step(metrics.CONNECTIONS)
    metrics.observe(metrics.HANDSHAKE_SECONDS, time.perf_counter() - started)
    log.info("connected", extra={"event": "connected", "user_id": conn.user_id, "conn_id": conn.id,
                                 "ip": conn.ip})
    try:
        welcome = {"userId": conn.user_id, "message": WELCOME, "connectionId": conn.id,
                   "expiresAt": iso_utc(conn.expires_at), "pingInterval": rt.settings.ping_interval,
                   "worker": os.getpid()}
        if subprotocol == V2:
            epoch, top = rt.fanout.join_position(conn, conn.user_stream)
            welcome["protocol"] = V2
            welcome["user"] = {"stream": conn.user_stream, "offset": top, "epoch": epoch}
        conn.send_json({"type": "connected", "data": welcome})
        if resume is not None:
            resume.after_join(conn, conn.user_stream, joined)     # missed user events, after the welcome
    except Exception:
        # It is registered: the read loop below answers the client's close echo (or the
        # heartbeat cuts it), then unregisters it. Left as it was, a connection that never
        # got its welcome stayed in the hub and counted against the user's limit for good.
        log.exception("welcome failed", extra={"event": "internal_error", "user_id": conn.user_id,
                                               "conn_id": conn.id})
        conn.close(close_codes.INTERNAL_ERROR)
    # The client's greenlet: a plain one, started by the hub. gevent's Greenlet keeps more per
    # client, and even its spawn_raw gives each greenlet a record of the one that spawned it
    # and a `loop` attribute (an instance dict): 194 bytes per idle client (measured).
    hub = gevent.get_hub()
    hub.loop.run_callback(greenlet(_live, hub).switch, rt, conn, resume)


def _live(rt, conn, resume):
    """One client's greenlet: read until it goes, then unregister and close."""
    try:
        conn.read_loop(rt.commands.handler(conn.protocol))
    finally:
        if resume is not None:
            resume.depart(conn, conn.closed_by_client)    # before its channels are forgotten
        for key in conn.channels:
            metrics.unsubscribed(key)
        rt.fanout.remove(conn)
        metrics.step(metrics.CONNECTIONS, -1)
        conn.abort()
        conn.sock.close()
        conn.ended()                # freed by reference counting, not the cyclic collector
        # At debug level (LOG_LEVEL=DEBUG): the `connected` line is the one record of a
        # connection at info; a second per client was ~2.5 % of a connect in a reconnect
        # storm (issue 11). Server-side closes have their own lines (slow_client, ...).
        log.debug("disconnected", extra={"event": "disconnected", "user_id": conn.user_id,
                                         "conn_id": conn.id})
