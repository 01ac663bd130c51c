"""The Redis broker: fan-out across workers and hosts through Redis pub/sub.

Publishing: one envelope per event (wire.py), PUBLISHed to `<prefix><topic>` for each
topic of its route (`fonana:rt:channel:post_P`, `fonana:rt:user:U`). Nothing is delivered
locally at publish time: every worker, the publishing one included, delivers what
its listener receives, so all workers see the same order.

Listening: per worker, one subscriber connection and one listener greenlet. The
listener is the only greenlet that touches that connection: it reads, and it writes
the SUBSCRIBE/UNSUBSCRIBE commands that `listen`/`unlisten` ask for (woken through a
pipe), batched per wake-up. It holds only the topics fanout asked for (`listen` and
not yet `unlisten`: those with local connections) plus this worker's private topic,
used by `ready()` for a real publish -> receive round trip. Every message it receives
is decoded (wire.Decoder) and handed to `on_message`.

"Subscribed means delivered": the first local subscriber of a topic waits (at most
SUBSCRIBE_WAIT) until Redis has acknowledged the SUBSCRIBE, and so does anyone who
joins the topic while that acknowledgement is still on its way. Replies arrive in
command order, so a FIFO of expected replies pairs each acknowledgement with the
exact command it answers.

Redis goes away: the listener reconnects with capped, jittered back-off and
resubscribes every topic it was asked for; publishes raise BrokerUnavailable (the
HTTP API answers 503); waits are bounded everywhere.
"""
from __future__ import annotations

import logging
import math
import os
import random
import socket
import time
import uuid
from collections import deque
from urllib.parse import urlsplit, urlunsplit

import gevent
import gevent.select
import redis
from gevent.event import Event
from redis.backoff import NoBackoff
from redis.connection import BlockingConnectionPool, Connection, parse_url
from redis.retry import Retry

from .. import metrics, wire
from . import Broker, BrokerUnavailable

log = logging.getLogger("fonana_realtime.broker")

SUBSCRIBE_WAIT = 2.0        # a first subscriber waits at most this for Redis's acknowledgement
READY_WAIT = 2.0            # /ready: publish -> receive round trip through our own listener
CLIENT_TIMEOUT = 2.0        # publishing client: connect, read and write timeouts
LISTENER_TIMEOUT = 5.0      # subscriber connection: connect and mid-message reads
PING_EVERY = 10.0           # an idle subscriber connection sends PING after this long ...
PONG_WAIT = 5.0             # ... and is dropped when no reply arrives within this
BACKOFF_BASE, BACKOFF_CAP = 0.1, 1.0
STABLE_LINK = 5.0           # a link that lived this long resets the back-off (no tight flapping)
PUBLISH_POOL = 32           # publishing connections per worker (callers wait <= CLIENT_TIMEOUT)
CHANNELS_PER_COMMAND = 500  # resubscribing thousands of topics: a few big commands
YIELD_EVERY = 64            # a burst of messages: let client greenlets run between batches
DROP_LOG_EVERY = 10.0       # seconds between warnings about dropped (malformed) messages


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"                  # IPv6
        if parts.username:
            netloc = f"{parts.username}:***@{netloc}"
        else:
            netloc = f":***@{netloc}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<unparseable REDIS_URL>"


def backoff_delay(attempt: int) -> float:
    """Exponential, capped, with jitter in the upper half (never a synchronised herd)."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(attempt, 16)))
    return random.uniform(ceiling / 2, ceiling)


class _Desync(Exception):
    """A reply that does not match the command it should answer: reconnect."""


class RedisBroker(Broker):
    name = "redis"

    def __init__(self, url: str, prefix: str = wire.DEFAULT_PREFIX):
        super().__init__()
        self.url = url
        self.where = redacted(url)
        self.prefix = prefix
        self._bprefix = prefix.encode()
        pool = BlockingConnectionPool.from_url(
            url, max_connections=PUBLISH_POOL, timeout=CLIENT_TIMEOUT,
            socket_timeout=CLIENT_TIMEOUT, socket_connect_timeout=CLIENT_TIMEOUT,
            # No blind retry: a PUBLISH the server ran before the link broke would
            # be delivered twice. A pooled link the server closed is replaced at
            # checkout by the pool itself.
            retry=Retry(NoBackoff(), 0), protocol=2)
        self.client = redis.Redis(connection_pool=pool)
        # listener state (only the listener greenlet writes the subscriber socket)
        self._greenlet = None
        self._conn = None
        self._down = False                      # the last connection attempt failed / link lost
        self._stopping = False
        self._private = b""                     # this worker's own topic, for ready()
        self._private_ev = Event()              # set while Redis has acknowledged it on this link
        self._acked: dict[str, Event] = {}      # topic -> event of the last SUBSCRIBE written
        self._waiting: dict[str, Event] = {}    # topic -> event for a SUBSCRIBE not yet written
        self._dirty: set[str] = set()           # topics whose membership changed since the last flush
        self._expect: deque = deque()           # (kind, channel, event|None) in reply order
        self._wanted: set[str] = set()          # topics fanout asked for (local subscribers)
        self._wake_r = self._wake_w = -1
        self._wake_pending = False
        self._nonces: dict[str, Event] = {}     # ready() round trips in flight
        self._decoder = wire.Decoder()
        self._last_rx = 0.0
        self._ping_sent: float | None = None
        self._dropped = 0
        self._drop_logged_at = 0.0
        self._connects = 0

    # ---- lifecycle ------------------------------------------------------------------

    def start(self):
        if self._greenlet is not None:
            return
        node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._private = self._bprefix + b"worker:" + node.encode()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._greenlet = gevent.spawn(self._run)
        log.info("redis broker starting", extra={"event": "broker_start", "redis": self.where,
                                                 "prefix": self.prefix})

    def stop(self):
        self._stopping = True
        self._wake()
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        self._lost()

    # ---- publish ----------------------------------------------------------------------

    def publish(self, route, payload: bytes):
        topics = wire.route_topics(route)
        try:
            wire.publish(self.client, self.prefix, topics, wire.envelope(topics, payload))
        except redis.RedisError as exc:
            log.warning("publish to redis failed", extra={"event": "broker_publish_failed",
                                                         "error": type(exc).__name__})
            raise BrokerUnavailable(type(exc).__name__) from None
        metrics.BROKER_PUBLISHED.inc(len(topics))
        return {}               # no positions until the Redis history (issue 9, 9b) is in

    # ---- listen / unlisten (called by fanout, in a client's greenlet) ----------------

    def listen(self, topic: str):
        """First local subscriber of `topic`: returns once Redis acknowledged the
        SUBSCRIBE, or after SUBSCRIBE_WAIT, or at once while Redis is down (the
        reconnect resubscribes every topic asked for)."""
        self._wanted.add(topic)
        self._dirty.add(topic)
        self._wake()
        if self._down or self._greenlet is None:
            return
        event = self._acked.get(topic)
        if event is None:
            event = self._waiting.get(topic)
            if event is None:
                event = self._waiting[topic] = Event()
        event.wait(SUBSCRIBE_WAIT)

    def wait_listening(self, topic: str):
        """A later subscriber: waits only while the first one's SUBSCRIBE is unacknowledged."""
        if self._down:
            return
        event = self._acked.get(topic) or self._waiting.get(topic)
        if event is not None and not event.is_set():
            event.wait(SUBSCRIBE_WAIT)

    def unlisten(self, topic: str):
        self._wanted.discard(topic)
        self._dirty.add(topic)
        self._wake()

    def _wake(self):
        if not self._wake_pending and self._wake_w >= 0:
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"!")
            except OSError:
                pass

    # ---- readiness ----------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """A real round trip: publish a nonce to our private topic, wait for our
        own listener to receive it."""
        if self._down or self._greenlet is None:
            return False, "broker_unavailable"
        if not self._private_ev.wait(READY_WAIT):       # (re)connecting: a bounded wait
            return False, "broker_unavailable"
        nonce = uuid.uuid4().hex
        event = self._nonces[nonce] = Event()
        try:
            try:
                self.client.publish(self._private, nonce)
            except redis.RedisError:
                return False, "broker_unavailable"
            if not event.wait(READY_WAIT):
                return False, "broker_timeout"
            return True, "ok"
        finally:
            self._nonces.pop(nonce, None)

    # ---- the listener greenlet -------------------------------------------------------

    def _run(self):
        attempt = 0
        logged_at = -math.inf
        while not self._stopping:
            connected_at = None
            try:
                self._connect()
                connected_at = time.monotonic()
                self._serve()
            except gevent.GreenletExit:
                raise
            except Exception as exc:        # never let the listener die: log, back off, retry
                expected = isinstance(exc, (redis.RedisError, OSError, _Desync))
                now = time.monotonic()
                if not self._stopping and (attempt == 0 or not expected or now - logged_at > 30):
                    logged_at = now
                    log.log(logging.WARNING if expected else logging.ERROR,
                            "redis listener: no link to redis, reconnecting with back-off",
                            exc_info=not expected,
                            extra={"event": "broker_disconnected", "redis": self.where,
                                   "error": type(exc).__name__, "attempt": attempt})
            self._lost()
            if self._stopping:
                break
            if connected_at is not None and time.monotonic() - connected_at > STABLE_LINK:
                attempt = 0                 # a link that lived: start the back-off over
            gevent.sleep(backoff_delay(attempt))
            attempt += 1

    def _connect(self):
        options = parse_url(self.url)
        cls = options.pop("connection_class", Connection)
        options.update(socket_timeout=LISTENER_TIMEOUT, socket_connect_timeout=LISTENER_TIMEOUT,
                       retry=Retry(NoBackoff(), 0), protocol=2, health_check_interval=0,
                       client_name="fonana-rt-sub-" + str(os.getpid()))
        conn = cls(**options)
        conn.connect()
        self._conn = conn
        self._down = False
        self._connects += 1
        if self._connects > 1:
            metrics.BROKER_RECONNECTS.inc()
        self._last_rx = time.monotonic()
        self._ping_sent = None
        self._expect.append((b"subscribe", self._private, self._private_ev))
        conn.send_command("SUBSCRIBE", self._private, check_health=False)
        self._dirty.update(self._wanted)            # everything this worker needs
        self._flush()
        log.info("redis listener connected", extra={
            "event": "broker_connected", "redis": self.where, "topics": len(self._acked),
            "reconnect": self._connects > 1})

    def _lost(self):
        """The link is gone: release everyone waiting on it; the next link resubscribes."""
        conn, self._conn = self._conn, None
        self._down = True
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:
                pass
        for _, _, event in self._expect:
            if event is not None and event is not self._private_ev:
                event.set()
        for event in self._waiting.values():
            event.set()
        self._expect.clear()
        self._acked.clear()
        self._waiting.clear()
        self._ping_sent = None
        self._private_ev.clear()
        metrics.BROKER_TOPICS.set(0)

    def _serve(self):
        conn = self._conn
        fd = conn._sock.fileno()
        wake = self._wake_r
        while not self._stopping:
            handled = 0
            while conn.can_read(timeout=0):          # buffered or readable now
                reply = conn.read_response(disconnect_on_error=False)
                self._last_rx = time.monotonic()
                self._on_reply(reply)
                handled += 1
                if handled % YIELD_EVERY == 0:
                    gevent.sleep(0)
                    if self._dirty:
                        self._flush()
            if self._dirty:
                self._flush()
                continue
            readable, _, _ = gevent.select.select([fd, wake], [], [], self._idle_timeout(conn))
            if wake in readable:
                self._wake_pending = False
                try:
                    while os.read(wake, 4096):
                        pass
                except BlockingIOError:
                    pass

    def _idle_timeout(self, conn) -> float:
        now = time.monotonic()
        if self._ping_sent is not None:
            if now - self._ping_sent > PONG_WAIT:
                raise redis.ConnectionError("no reply to PING")
            return self._ping_sent + PONG_WAIT - now + 0.01
        idle_until = self._last_rx + PING_EVERY
        if now < idle_until:
            return idle_until - now + 0.01
        self._ping_sent = now
        self._expect.append((b"pong", None, None))
        conn.send_command("PING", check_health=False)
        return PONG_WAIT + 0.01

    def _flush(self):
        """Write the SUBSCRIBE/UNSUBSCRIBE commands the changed topics need."""
        conn = self._conn
        dirty, self._dirty = self._dirty, set()
        if conn is None:
            self._dirty = dirty | self._dirty
            return
        wanted = self._wanted
        subscribe, unsubscribe = [], []
        for topic in dirty:
            if topic in wanted:
                if topic not in self._acked:
                    event = self._waiting.pop(topic, None) or Event()
                    self._acked[topic] = event
                    subscribe.append((self._bprefix + topic.encode(), event))
            else:
                event = self._waiting.pop(topic, None)
                if event is not None:
                    event.set()
                if self._acked.pop(topic, None) is not None:
                    unsubscribe.append(self._bprefix + topic.encode())
        for start in range(0, len(subscribe), CHANNELS_PER_COMMAND):
            chunk = subscribe[start:start + CHANNELS_PER_COMMAND]
            self._expect.extend((b"subscribe", channel, event) for channel, event in chunk)
            conn.send_command("SUBSCRIBE", *(channel for channel, _ in chunk), check_health=False)
        for start in range(0, len(unsubscribe), CHANNELS_PER_COMMAND):
            chunk = unsubscribe[start:start + CHANNELS_PER_COMMAND]
            self._expect.extend((b"unsubscribe", channel, None) for channel in chunk)
            conn.send_command("UNSUBSCRIBE", *chunk, check_health=False)
        metrics.BROKER_TOPICS.set(len(self._acked))

    def _on_reply(self, reply):
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
            try:
                self._on_message(reply[1], reply[2])
            except Exception:           # a bug on one message must not stop the others
                log.exception("redis listener: message handling failed",
                              extra={"event": "broker_message_error"})
            return
        kind = reply[0] if isinstance(reply, list) and reply else (b"pong" if reply == b"PONG" else None)
        if kind not in (b"subscribe", b"unsubscribe", b"pong"):
            raise _Desync(f"unexpected reply type {kind!r}")
        if not self._expect:
            raise _Desync(f"unrequested {kind!r} reply")
        want_kind, channel, event = self._expect.popleft()
        if want_kind != kind or (channel is not None and reply[1] != channel):
            raise _Desync(f"expected {want_kind!r} reply, got {kind!r}")
        if kind == b"pong":
            self._ping_sent = None
        elif event is not None:
            event.set()

    # ---- one message from Redis ---------------------------------------------------

    def _on_message(self, channel: bytes, data: bytes):
        if channel == self._private:
            event = self._nonces.get(data.decode("ascii", "replace"))
            if event is not None:
                event.set()
            return
        metrics.BROKER_RECEIVED.inc()
        topic = channel[len(self._bprefix):].decode("utf-8", "replace")
        try:
            message = self._decoder.decode(topic, data)
        except wire.Drop as drop:
            return self._drop(drop.reason, topic)
        if message is not None:                   # None: another copy of a union delivered
            self.on_message(message)
        return None

    def _drop(self, reason: str, topic: str):
        """An untrusted message we cannot deliver: counted, logged without its payload."""
        self._dropped += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_EVERY:
            self._drop_logged_at = now
            log.warning("dropped malformed message from redis", extra={
                "event": "broker_drop", "reason": reason, "topic": topic[:200],
                "dropped_total": self._dropped})
