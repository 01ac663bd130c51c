"""`GET /ws` (and `/`): every refusal happens before the upgrade, as plain HTTP.

Why: the Fonana client resets its reconnect back-off on every successful open, so
"open, then close" made it reconnect forever. A 401/403/429/503 before the upgrade
does not count as an open.
"""
from __future__ import annotations

import logging
import os
import socket
import time

import gevent
from flask import Blueprint, g, request
from flask_sock import Sock

from .. import metrics
from ..auth import AuthError, verify_token
from ..commands import iso_utc
from ..connection import V2, Connection
from ..handshake_limits import client_ip
from ..store import StoreUnavailable
from . import json_error, runtime

log = logging.getLogger("fonana_realtime.websocket")
bp = Blueprint("websocket", __name__)
sock = Sock()

WELCOME = "Successfully connected to WebSocket server"


class _NoReaderThread:
    """simple_websocket starts a reader thread per connection; our Connection reads
    in the one bare greenlet `serve` spawns for it instead (one greenlet per client,
    not two; the request's greenlet ends after the handshake)."""

    name = "fonana-realtime-reader"

    def __init__(self, target=None):
        pass

    def start(self):
        pass


class _NoEvent:
    def set(self):
        pass

    def clear(self):
        pass


# `subprotocols`: simple_websocket answers `Sec-WebSocket-Protocol: fonana.v2` when the
# client offered it (PROTOCOL.md 7); a client that offered nothing we know gets none.
SERVER_OPTIONS = {"thread_class": _NoReaderThread, "event_class": _NoEvent,
                  "subprotocols": [V2]}


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


@bp.before_request
def refuse_before_upgrade():
    rt = runtime()
    settings = rt.settings
    g.handshake_started = time.perf_counter()
    if rt.draining:
        return json_error(503, "draining", reason="server is shutting down")
    origin = request.headers.get("Origin")
    if origin is not None and not settings.all_origins_allowed and origin not in settings.allowed_origins:
        metrics.AUTH_FAILURES.labels("origin").inc()
        return json_error(403, "forbidden", reason="origin_not_allowed")
    ip = client_ip(request.environ, settings.trusted_proxies)
    if not rt.handshakes.allow(ip):
        metrics.AUTH_FAILURES.labels("handshake_rate").inc()
        return json_error(429, "too_many_requests", reason="handshake_rate")
    try:
        identity = verify_token(request.args.get("token") or _bearer(), settings.jwt_secrets,
                                settings.jwt_leeway_seconds)
        if not rt.user_exists(identity.user_id):
            raise AuthError("unknown_user")
    except AuthError as exc:
        metrics.AUTH_FAILURES.labels(exc.reason).inc()
        log.info("handshake refused", extra={"event": "auth_failed", "reason": exc.reason, "ip": ip})
        return json_error(401, "unauthorized", reason=exc.reason)
    except StoreUnavailable:
        metrics.AUTH_FAILURES.labels("unavailable").inc()
        return json_error(503, "unavailable", reason="database_unavailable")
    if len(rt.hub.connections) >= settings.worker_connections:
        return json_error(503, "unavailable", reason="worker_full")
    if rt.hub.user_connection_count(identity.user_id) >= settings.max_connections_per_user:
        metrics.AUTH_FAILURES.labels("too_many_connections").inc()
        return json_error(429, "too_many_requests", reason="too_many_connections")
    g.identity = identity
    g.client_ip = ip
    # Never negotiate permessage-deflate. Our frames are pre-built, uncompressed, for every
    # recipient, and client commands are a few bytes; but a browser that negotiated it
    # compresses what it sends, and the inflate context we would keep for it costs ~40 KB
    # per connection (measured: 52 KB vs 12 KB per idle client). Without the offer the
    # handshake answers without the extension and clients send plain frames.
    request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    return None


def serve(ws):
    """The handshake is done: take the socket over and let the request end.

    The client's life runs in a fresh, shallow greenlet holding only the socket, the
    post-handshake wsproto state and a Connection. Keeping the request greenlet
    instead would keep its whole stack alive per idle client (gunicorn's parser,
    environ, Flask and werkzeug request objects, the handshake state): tens of KB each.
    """
    rt = runtime()
    identity = g.identity
    sock = ws.sock.dup()            # ours now; gunicorn closes its own copy when the request ends
    try:
        # Every write is a whole batch of frames, meant to leave now. With Nagle's algorithm a
        # small write that follows an unacknowledged one waits for the peer's delayed ACK (40 ms
        # on Linux): measured in the browser tests, a replayed like reached the page 36-41 ms
        # late while the next came on time, 84 ms apart, and the client's 100 ms throttle
        # dropped it. (Node's ws sets noDelay too.)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass                        # not TCP (a unix socket behind a proxy)
    proto = ws.ws.connection        # the frame protocol only; the handshake objects go away
    ws.connected = False            # flask-sock must not write a close frame: we own the writes
    conn = Connection(sock, proto, identity.user_id, identity.expires_at, g.client_ip, rt.settings)
    conn.protocol = V2 if ws.subprotocol == V2 else None
    if conn.protocol is None:
        conn.pacer = rt.pacer       # legacy: events paced for the Fonana client (PROTOCOL.md 8)
        if rt.resume is not None:
            rt.resume.arrive(conn)  # where its dropped connections left off (may ask Redis)
    rt.fanout.add(conn)             # waits (bounded) until the broker hears the user's topic
    metrics.CONNECTIONS.inc()
    metrics.HANDSHAKE_SECONDS.observe(time.perf_counter() - g.handshake_started)
    log.info("connected", extra={"event": "connected", "user_id": conn.user_id, "conn_id": conn.id,
                                 "ip": conn.ip})
    welcome = {"userId": conn.user_id, "message": WELCOME, "connectionId": conn.id,
               "expiresAt": iso_utc(conn.expires_at), "pingInterval": rt.settings.ping_interval,
               "worker": os.getpid()}
    if conn.protocol == V2:
        epoch, top = rt.fanout.join_position(conn, conn.user_stream)
        welcome["protocol"] = V2
        welcome["user"] = {"stream": conn.user_stream, "offset": top, "epoch": epoch}
    conn.send_json({"type": "connected", "data": welcome})
    if conn.protocol is None and rt.resume is not None:
        rt.resume.after_join(conn, conn.user_stream)     # missed user events, right after the welcome
    gevent.spawn_raw(_live, rt, conn)      # a bare greenlet: no Greenlet bookkeeping per client


def _live(rt, conn):
    """One client's greenlet: read until it goes, then unregister and close."""
    try:
        conn.read_loop(rt.commands.handle)
    finally:
        if conn.protocol is None and rt.resume is not None:
            rt.resume.depart(conn, conn.closed_by_client)    # before its channels are forgotten
        for key in conn.channels:
            metrics.SUBSCRIPTIONS.labels(key.partition("_")[0]).dec()
        rt.fanout.remove(conn)
        metrics.CONNECTIONS.dec()
        conn.abort()
        conn.sock.close()
        log.info("disconnected", extra={"event": "disconnected", "user_id": conn.user_id,
                                        "conn_id": conn.id})


sock.route("/ws", bp=bp, endpoint="ws")(serve)
sock.route("/", bp=bp, endpoint="ws_root")(serve)
