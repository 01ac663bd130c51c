"""`GET /ws` (and `/`): every refusal happens before the upgrade, as plain HTTP.

Why: the Fonana client resets its reconnect back-off on every successful open, so
"open, then close" made it reconnect forever. A 401/403/429/503 before the upgrade
does not count as an open.

The two routes are Flask's (this blueprint's `websocket=True` rules: a plain GET gets
Flask's 426). An upgrade request that matches them is served by `Upgrades`, in front of
Flask's request machinery: a handshake needs the route match and the environ, not a
request context, session, before/after-request chains or a response object, and in a
reconnect storm that machinery was ~8 % of a connect's CPU (issue 11).
"""
from __future__ import annotations

import logging
import socket
import time
from urllib.parse import parse_qsl

from flask import Blueprint
from werkzeug import urls as _registers_url_quote  # noqa: F401  (the errors= handler below)
from werkzeug.exceptions import HTTPException

from .. import lifecycle, metrics
from ..auth import AuthError
from ..handshake_limits import client_ip
from ..store import StoreUnavailable
from . import bearer_token, upgrade

log = logging.getLogger("fonana_realtime.websocket")
bp = Blueprint("websocket", __name__)

ENDPOINTS = frozenset({"websocket.ws", "websocket.ws_root"})
# Distinct upgrade requests (path, host, ...) whose route is remembered; past it, matched
# each time (the path and the headers are the client's to vary).
ENDPOINT_MEMO = 256


def _served_in_front_of_flask():
    # Unreachable: Flask matches these rules only for upgrade requests (websocket=True),
    # and those never reach Flask (Upgrades takes them first).
    raise RuntimeError("WebSocket upgrades are served by web.websocket.Upgrades")


# websocket=True: werkzeug matches these rules only for an Upgrade: websocket request;
# a plain GET gets WebsocketMismatch, answered 426 by the app.
bp.add_url_rule("/ws", "ws", _served_in_front_of_flask, websocket=True)
bp.add_url_rule("/", "ws_root", _served_in_front_of_flask, websocket=True)


class Upgrades:
    """WSGI middleware: WebSocket upgrades to our routes are handshaken here, every other
    request goes on to Flask (`app.wsgi_app`)."""

    def __init__(self, app, rt, flask_wsgi):
        self.app, self.rt, self.flask_wsgi = app, rt, flask_wsgi
        self._endpoints: dict[tuple, str | None] = {}     # see `endpoint`

    def endpoint(self, environ) -> str | None:
        """The endpoint Flask's URL map gives this upgrade request, None if none.

        Memoised on everything werkzeug's bind and match read from the environ (the URL
        map is complete once app.create_app returns; no rule is added later). Matching it was ~8 % of a connect's CPU in the storm (werkzeug's
        `bind_to_environ` + `match`, ~80 µs), for what is nearly always "/ws" or "/"."""
        key = (environ.get("REQUEST_METHOD"), environ.get("SCRIPT_NAME"), environ.get("PATH_INFO"),
               environ.get("HTTP_HOST"), environ.get("SERVER_NAME"), environ.get("SERVER_PORT"),
               environ.get("wsgi.url_scheme"), environ.get("HTTP_CONNECTION"),
               environ.get("HTTP_UPGRADE"))
        try:
            return self._endpoints[key]
        except KeyError:
            pass
        try:
            adapter = self.app.url_map.bind_to_environ(
                environ, server_name=self.app.config["SERVER_NAME"],
                subdomain=self.app.url_map.default_subdomain or None)
            endpoint, _ = adapter.match()
        except HTTPException:
            endpoint = None                    # Flask answers it (404, 405, ...)
        if len(self._endpoints) < ENDPOINT_MEMO:
            self._endpoints[key] = endpoint
        return endpoint

    def __call__(self, environ, start_response):
        if environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            if self.endpoint(environ) in ENDPOINTS:
                try:
                    return handshake(self.app, self.rt, environ, start_response)
                except StopIteration:
                    raise                      # handed over: gunicorn ends the request
                except Exception:
                    log.exception("unhandled error", extra={"event": "internal_error"})
                    return _json(self.app, environ, start_response, 500, "internal_error")
        return self.flask_wsgi(environ, start_response)


def _json(app, environ, start_response, status: int, error: str, **fields):
    """The same JSON error body as web.json_error, without an app context."""
    response = app.json.response({"error": error, **fields})
    response.status_code = status
    return response(environ, start_response)


def _bearer(environ) -> str | None:
    return bearer_token(environ.get("HTTP_AUTHORIZATION", "")) or None


def _query_token(environ) -> str | None:
    """The first `token` of the query string, parsed as werkzeug's `request.args` does
    (blank values kept, invalid percent-escapes left as they are), without building a
    werkzeug Request per handshake (~2 % of a connect in the storm profile, issue 11).
    Raw bytes that are not UTF-8 become U+FFFD: such a token is refused as invalid."""
    query = environ.get("QUERY_STRING", "")
    if "token" not in query and "%" not in query:
        return None
    for name, value in parse_qsl(query.encode("latin-1").decode("utf-8", "replace"),
                                 keep_blank_values=True, errors="werkzeug.url_quote"):
        if name == "token":
            return value
    return None


def handshake(app, rt, environ, start_response):
    """Refuse (plain HTTP, JSON body) or upgrade and hand the socket to a Connection."""
    started = time.perf_counter()
    rt.start()
    settings = rt.settings
    if rt.draining:
        return _json(app, environ, start_response, 503, "draining", reason="server is shutting down")
    origin = environ.get("HTTP_ORIGIN")
    if origin is not None and not settings.all_origins_allowed and origin not in settings.allowed_origins:
        metrics.AUTH_FAILURES.labels("origin").inc()
        return _json(app, environ, start_response, 403, "forbidden", reason="origin_not_allowed")
    ip = client_ip(environ, settings.trusted_proxies)
    if not rt.handshakes.allow(ip):
        metrics.AUTH_FAILURES.labels("handshake_rate").inc()
        return _json(app, environ, start_response, 429, "too_many_requests", reason="handshake_rate")
    try:
        identity = rt.verified_tokens.verify(_query_token(environ) or _bearer(environ))
        if rt.revocations.refuses(identity.user_id, identity.issued_at):
            metrics.AUTH_FAILURES.labels("token_revoked").inc()
            log.info("handshake refused", extra={"event": "auth_failed", "reason": "token_revoked",
                                                 "user_id": identity.user_id, "ip": ip})
            return _json(app, environ, start_response, 401, "token_revoked")
        if not rt.user_exists(identity.user_id):
            raise AuthError("unknown_user")
    except AuthError as exc:
        metrics.AUTH_FAILURES.labels(exc.reason).inc()
        log.info("handshake refused", extra={"event": "auth_failed", "reason": exc.reason, "ip": ip})
        return _json(app, environ, start_response, 401, "unauthorized", reason=exc.reason)
    except StoreUnavailable:
        metrics.AUTH_FAILURES.labels("unavailable").inc()
        return _json(app, environ, start_response, 503, "unavailable", reason="database_unavailable")
    if len(rt.hub.connections) >= settings.worker_connections:
        return _json(app, environ, start_response, 503, "unavailable", reason="worker_full")
    if rt.hub.user_connection_count(identity.user_id) >= settings.max_connections_per_user:
        metrics.AUTH_FAILURES.labels("too_many_connections").inc()
        return _json(app, environ, start_response, 429, "too_many_requests", reason="too_many_connections")
    try:
        key, subprotocol = upgrade.check(environ)
    except upgrade.BadHandshake:
        return _json(app, environ, start_response, 400, "bad_request", reason="not a valid WebSocket handshake")
    raw = environ.get("gunicorn.socket")
    if raw is None:
        return _json(app, environ, start_response, 500, "internal_error",
                     reason="the WebSocket upgrade needs gunicorn")
    lifecycle.serve(rt, _take_socket(raw), upgrade.frame_protocol(), upgrade.accept_head(key, subprotocol),
                    subprotocol, identity, ip, started)
    # gunicorn's gevent worker ends a request whose application raises StopIteration
    # without writing anything (the signal flask-sock used), and closes its copy of
    # the socket: ours is a dup.
    raise StopIteration()


def _take_socket(raw):
    """gunicorn's socket, ours from now on: its object lets go of the descriptor, so its
    close when the request ends does nothing (a dup cost a dup and a close syscall per
    connect)."""
    sock = type(raw)(raw.family, raw.type, raw.proto, fileno=raw.detach())
    try:
        # Every write is a whole batch of frames, meant to leave now. With Nagle's algorithm a
        # small write that follows an unacknowledged one waits for the peer's delayed ACK (40 ms
        # on Linux): measured in the browser tests, a replayed like reached the page 36-41 ms
        # late while the next came on time, 84 ms apart, and the client's 100 ms throttle
        # dropped it. (Node's ws sets noDelay too.)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass                        # not TCP (a unix socket behind a proxy)
    return sock
