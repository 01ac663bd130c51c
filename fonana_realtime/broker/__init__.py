"""How an event reaches every worker.

A broker does two things: `publish` (send an event towards its topics, on every
worker) and `listen`/`unlisten` (this worker wants, or no longer wants, a topic).
What arrives is handed to `deliver_local`, which frames the event once and gives
the frame to the hub. Backends: `memory` (one worker) and `redis` (many).
"""
from __future__ import annotations

import time

import gevent

from .. import metrics
from ..hub import channel_topic, user_topic
from ..wsframes import text_frame


# A batch of queued deliveries is written at the latest when it holds this many events
# or its first event has waited this long (see Broker.deliver_local).
MAX_BATCH = 256
MAX_BATCH_SECONDS = 0.005


class BrokerUnavailable(Exception):
    """The event could not be handed to the cross-worker transport."""


def route_topics(route) -> list[str]:
    return [channel_topic(k) for k in route.channels] + [user_topic(u) for u in route.users]


class Broker:
    name = "base"

    def __init__(self, hub):
        self.hub = hub
        self._deliveries: list = []     # (topics, frame, published_at) waiting for this turn's write
        self._batch_started = 0.0
        hub.on_first = self.listen
        hub.on_last = self.unlisten

    def start(self):
        """Begin listening (called once in the worker, after fork)."""

    def stop(self):
        """Stop listening."""

    def publish(self, route, payload: bytes):
        """Send one serialised event (JSON bytes) to every worker holding its topics."""
        raise NotImplementedError

    def listen(self, topic: str):
        raise NotImplementedError

    def unlisten(self, topic: str):
        raise NotImplementedError

    def ready(self) -> tuple[bool, str]:
        """Whether events can flow now, and a short reason if not."""
        return True, "ok"

    def deliver_local(self, topics, payload: bytes, published_at: float | None = None):
        """Hand one event to this worker's connections, framed once.

        Events are queued and written at the end of the current turn of the event loop,
        all that arrived in that turn together: a connection gets them in one write (one
        syscall) instead of one each, which is most of what a delivery costs. A turn ends
        as soon as the publishing greenlet yields; a greenlet that keeps publishing without
        yielding (back-to-back requests already buffered on a keep-alive connection, a
        list publish) writes the batch itself once it holds MAX_BATCH events or has held
        one for MAX_BATCH_SECONDS, so nothing waits on it for long.
        """
        pending = self._deliveries
        if not pending:
            self._batch_started = time.monotonic()
            gevent.spawn_raw(self._write_pending)
        pending.append((topics, text_frame(payload), published_at))
        if len(pending) >= MAX_BATCH or time.monotonic() - self._batch_started >= MAX_BATCH_SECONDS:
            self._write_pending()

    def _write_pending(self):
        batch, self._deliveries = self._deliveries, []
        if not batch:              # already written by deliver_local
            return
        delivered, dropped = self.hub.deliver_batch([(topics, frame) for topics, frame, _ in batch])
        if delivered:
            metrics.EVENTS_DELIVERED.inc(delivered)
            metrics.FRAMES_OUT.inc(delivered)
        if dropped:
            metrics.DELIVERIES_DROPPED.inc(dropped)
        now = time.time()
        for _, _, published_at in batch:
            if published_at is not None:
                metrics.DELIVERY_SECONDS.observe(max(0.0, now - published_at))


def open_broker(settings, hub) -> Broker:
    if settings.redis_url:
        from .redis import RedisBroker
        return RedisBroker(hub, settings.redis_url, settings.redis_prefix)
    from .memory import MemoryBroker
    return MemoryBroker(hub)
