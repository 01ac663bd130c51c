"""gunicorn's gevent worker, with a drain on SIGTERM instead of an abrupt stop, and the
contract's JSON refusal for a token too long for gunicorn's request limits.

The stock worker stops accepting as soon as SIGTERM arrives; ours first runs
`drain.drain` (ready 503, 1001 closes spread over WS_DRAIN_SECONDS) while still
serving HTTP, and only then lets the stock shutdown proceed.
"""
from __future__ import annotations

import json

import gevent
from gunicorn import util
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine
from gunicorn.workers.ggevent import GeventWorker

from . import turn_end
from .drain import drain

# What the handshake answers for a token over auth.MAX_TOKEN_BYTES (PROTOCOL.md 2.1).
_TOKEN_TOO_LONG = json.dumps({"error": "unauthorized", "reason": "invalid_token"}, separators=(",", ":")).encode()
_TOKEN_TOO_LONG_RESPONSE = (b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n"
                            b"Content-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n" % len(_TOKEN_TOO_LONG)) + _TOKEN_TOO_LONG


class DrainingGeventWorker(GeventWorker):
    _draining = None

    def run(self):
        turn_end.start()            # the hub runs from here on: per-turn work may be put off
        super().run()

    def handle_exit(self, sig, frame):
        if self._draining is None:
            # Signal handlers may not block: the drain runs in its own greenlet.
            self._draining = gevent.spawn(self._drain_then_stop)

    def _drain_then_stop(self):
        try:
            runtime = self.wsgi.extensions.get("fonana_realtime")
            if runtime is not None:
                drain(runtime)
        finally:
            self.alive = False

    def handle_error(self, req, client, addr, exc):
        """A request line or header field over gunicorn's cap (8190 bytes, its maximum)
        is, on this server, a handshake whose token (query or Bearer) is too long to be
        one of ours: answer the handshake's JSON 401 `invalid_token`, not gunicorn's HTML
        414/431. The line is never logged: it holds the token."""
        if isinstance(exc, (LimitRequestLine, LimitRequestHeaders)):
            self.log.warning("Invalid request from ip=%s: %s: answered 401 invalid_token",
                             (addr or ("",))[0], type(exc).__name__)
            try:
                util.write_nonblock(client, _TOKEN_TOO_LONG_RESPONSE)
            except Exception:
                self.log.debug("Failed to send error message.")
            return
        super().handle_error(req, client, addr, exc)
