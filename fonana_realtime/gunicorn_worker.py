"""gunicorn's gevent worker, with a drain on SIGTERM instead of an abrupt stop, the
contract's JSON refusal for a token too long for gunicorn's request limits, and a
per-connection path with what a plain HTTP/1 listener never needs decided once.

The stock worker stops accepting as soon as SIGTERM arrives; ours first runs
`drain.drain` (ready 503, 1001 closes spread over WS_DRAIN_SECONDS) while still
serving HTTP, and only then lets the stock shutdown proceed.
"""
from __future__ import annotations

import errno
import gc
import json
import logging
import time
from functools import partial

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn import http, util
from gunicorn.config import Config
from gunicorn.http.errors import (ConfigurationProblem, ExpectationFailed, ForbiddenProxyRequest,
                                  InvalidResponseHeader, InvalidResponseHeaderName, LimitRequestHeaders,
                                  LimitRequestLine, ParseException, UnsupportedTransferCoding)
from gunicorn.workers.ggevent import GeventWorker

from . import turn_end
from .drain import HANDOVER_WAIT, drain, replaced_by_siblings, sibling_answers

log = logging.getLogger("fonana_realtime.worker")

# A full garbage collection walks every tracked object, ~40 per connection: 77-241 ms each
# with 10,000 connections coming back after a drain, every handshake in flight stalled
# meanwhile, four of them in the reconnect (gc.callbacks; issue 22). Python's default
# allows one every 10 collections of the middle generation; every 100 took the reconnect's
# close→subscribed p99 from 301-313 to 66-101 ms (10,000 clients on PostgreSQL, 2 runs
# each). Young garbage is still collected as often; what waits longer is old garbage in
# reference cycles (Python also waits until a full collection has a quarter more objects
# to look at than the last). Closed connections are no longer any of it: they left 17
# (legacy) and 20 (v2) objects each in cycles, now 0 (Connection.ended,
# bench/connection_cycles.py). Kept for the pauses: a full collection still walks every
# live connection's objects.
FULL_COLLECTION_EVERY = 100



def _json_response(status: int, phrase: str, body: dict) -> bytes:
    """A whole HTTP answer with a JSON body, for what the worker answers itself."""
    data = json.dumps(body, separators=(",", ":")).encode()
    return (b"HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (status, phrase.encode(), len(data))) + data


# What the handshake answers for a token over auth.MAX_TOKEN_BYTES (PROTOCOL.md 2.1).
_TOKEN_TOO_LONG_RESPONSE = _json_response(401, "Unauthorized", {"error": "unauthorized", "reason": "invalid_token"})
# A request gunicorn cannot parse: the status gunicorn gives it (400 unless listed here),
# in JSON (PROTOCOL.md 8: HTTP errors are always JSON; gunicorn writes HTML).
_PARSE_ERROR_STATUS = ((UnsupportedTransferCoding, 501, "Not Implemented"),
                       (ExpectationFailed, 417, "Expectation Failed"),
                       (ForbiddenProxyRequest, 403, "Forbidden"),
                       (ConfigurationProblem, 500, "Internal Server Error"))
_INTERNAL_ERROR_RESPONSE = _json_response(500, "Internal Server Error", {"error": "internal_error"})


# `DrainingGeventWorker.handle` and `.run` are gunicorn's `AsyncWorker.handle` and
# `GeventWorker.run` of this release with their TLS, HTTP/2 and pywsgi branches folded
# away; tests/test_gunicorn_worker.py fails on another one, so that they are compared again
# before an upgrade.
MIRRORS_GUNICORN = "27.0.1"

# Connections one worker accepts per wake-up of its listener when several workers share
# the listening socket. gunicorn accepts 1 (so no worker takes a whole backlog), which in
# a reconnect storm costs a loop turn and a wake-up of every worker per connection: with
# 2 workers and REDIS_URL, 1,939 connects/s at 890 us of worker CPU each; with 8,
# 2,538/s at 695 us, and the connections still split at most 55/45 (bench/run --only
# storm2, 3 interleaved runs each; 100, gevent's one-worker value: 2,365/s, p99 +50 %).
ACCEPT_PER_WAKEUP = 8


class ConfigReadOnce(Config):
    """gunicorn's Config, each setting's value kept after its first read.

    gunicorn reads a dozen settings per request through `Config.__getattr__` (a dict
    lookup and the setting's `get`, each call). A worker's configuration never changes:
    a reload forks new workers, and nothing in a worker calls `Config.set`."""

    def __getattr__(self, name):
        value = super().__getattr__(name)
        self.__dict__[name] = value          # found by plain attribute lookup from now on
        return value


class DrainingGeventWorker(GeventWorker):
    _draining = None

    plain_http1 = False
    servers: list = []

    def init_process(self):
        # In the worker, after the fork (the master built this object, and keeps its Config).
        self.cfg.__class__ = ConfigReadOnce
        # No TLS and no cleartext HTTP/2 (gunicorn.conf.py configures neither): gunicorn's
        # per-connection checks for both would answer the same every time.
        self.plain_http1 = (not self.cfg.is_ssl and self.cfg.http2_cleartext == "off"
                            and bool(self.cfg.keepalive))
        self._listener_names: dict = {}
        super().init_process()

    def run(self):
        """gunicorn's GeventWorker.run (MIRRORS_GUNICORN) for a plain HTTP/1 listener, with
        its servers kept (`servers`), so that a drain can stop accepting (`_drain_then_stop`),
        and ACCEPT_PER_WAKEUP connections accepted per wake-up instead of 1."""
        turn_end.start()            # the hub runs from here on: per-turn work may be put off
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
        if not self.plain_http1 or self.server_class is not None:
            return super().run()
        servers = self.servers = []
        for s in self.sockets:
            s.setblocking(1)
            server = StreamServer(s, handle=partial(self.handle, s), spawn=Pool(self.worker_connections))
            if self.cfg.workers > 1:
                server.max_accept = ACCEPT_PER_WAKEUP
            server.start()
            servers.append(server)
        while self.alive:
            self.notify()
            gevent.sleep(1.0)
        try:
            for server in servers:                  # stop accepting
                server.close()
            started = time.time()                   # finish current requests until graceful_timeout
            while time.time() - started <= self.cfg.graceful_timeout:
                if all(server.pool.free_count() == server.pool.size for server in servers):
                    return
                self.notify()
                gevent.sleep(1.0)
            self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
            for server in servers:
                server.stop(timeout=1)
        except Exception:
            pass

    def handle(self, listener, client, addr):
        """One accepted connection: its HTTP/1 requests until it closes or is upgraded.

        gunicorn's own `handle` (MIRRORS_GUNICORN), less what a plain HTTP/1 listener
        never needs per connection: the TLS and HTTP/2 negotiation checks (decided once,
        `plain_http1`) and asking the kernel for the listener's address (it does not
        change). In the reconnect storm those were ~3 % of a connect (issue 11). Same
        parser, timeouts, hooks, errors and logs; any other listener takes gunicorn's."""
        if not self.plain_http1:
            return super().handle(listener, client, addr)
        client.setblocking(1)               # as GeventWorker.handle
        req = None
        try:
            parser = http.get_parser(self.cfg, client, addr)
            try:
                listener_name = self._listener_names.get(listener)
                if listener_name is None:
                    listener_name = self._listener_names[listener] = listener.getsockname()
                proxy_protocol_info = {}
                while True:
                    req = None
                    with self.timeout_ctx():
                        req = next(parser)
                    if not req:
                        break
                    if req.proxy_protocol_info:
                        proxy_protocol_info = req.proxy_protocol_info
                    else:
                        req.proxy_protocol_info = proxy_protocol_info
                    self.handle_request(listener_name, req, client, addr)
            except http.errors.NoMoreData as e:
                self.log.debug("Ignored premature client disconnection. %s", e)
            except StopIteration as e:
                self.log.debug("Closing connection. %s", e)
            except OSError:
                raise
            except Exception as e:
                self.handle_error(req, client, addr, e)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
            elif e.errno == errno.ECONNRESET:
                self.log.debug("Ignoring connection reset")
            elif e.errno == errno.ENOTCONN:
                self.log.debug("Ignoring socket not connected")
            else:
                self.log.debug("Ignoring EPIPE")
        except BaseException as e:
            self.handle_error(req, client, addr, e)
        finally:
            util.close(client)

    def handle_exit(self, sig, frame):
        if self._draining is None:
            # Signal handlers may not block: the drain runs in its own greenlet.
            self._draining = gevent.spawn(self._drain_then_stop)

    def _drain_then_stop(self):
        try:
            if self.servers and replaced_by_siblings(self.sockets):
                # A reload (HUP) or fewer workers (TTOU): the master still listens and other
                # workers accept, so this one stops taking connections rather than refusing
                # each new handshake with 503 while it drains (a 10,000-client reconnect
                # storm retried ~11,000 of them). Its open connections, keep-alive API
                # connections included, are served until they are closed.
                for server in self.servers:
                    server.stop_accepting()
                log.info("draining: new connections go to the other workers",
                         extra={"event": "drain_handover"})
                if not sibling_answers(self.sockets):
                    log.warning("draining: no other worker answered within %gs; closing anyway",
                                HANDOVER_WAIT, extra={"event": "drain_handover"})
            runtime = self.wsgi.extensions.get("fonana_realtime")
            if runtime is not None:
                drain(runtime)
        finally:
            self.alive = False

    def handle_error(self, req, client, addr, exc):
        """gunicorn's answers to what it could not parse or serve, in JSON instead of its
        HTML. A request line or header field over gunicorn's cap (8190 bytes, its maximum)
        is, on this server, a handshake whose token (query or Bearer) is too long to be
        one of ours: the handshake's 401 `invalid_token`, not 414/431. Any other request
        gunicorn cannot parse (a malformed request line, method, version or header): 400
        `bad_request` (or the status gunicorn gives it). Neither the request line nor the
        header is logged or echoed (gunicorn logs and echoes it): it may hold a token."""
        ip = (addr or ("",))[0]
        if isinstance(exc, (LimitRequestLine, LimitRequestHeaders)):
            self.log.warning("Invalid request from ip=%s: %s: answered 401 invalid_token", ip, type(exc).__name__)
            answer = _TOKEN_TOO_LONG_RESPONSE
        elif isinstance(exc, ParseException) and not isinstance(
                exc, (InvalidResponseHeader, InvalidResponseHeaderName)):    # those are ours: 500
            status, phrase = next(((status, phrase) for cls, status, phrase in _PARSE_ERROR_STATUS
                                   if isinstance(exc, cls)), (400, "Bad Request"))
            self.log.warning("Invalid request from ip=%s: %s: answered %d", ip, type(exc).__name__, status)
            answer = _json_response(status, phrase, {
                "error": phrase.lower().replace(" ", "_"),
                "reason": f"not a valid HTTP/1.1 request ({type(exc).__name__})"})
        else:
            self.log.exception("Error handling request")
            answer = _INTERNAL_ERROR_RESPONSE
        try:
            util.write_nonblock(client, answer)
        except Exception:
            self.log.debug("Failed to send error message.")
