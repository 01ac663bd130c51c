"""How an event reaches every worker.

A broker does two things: `publish` (send an event towards its topics, on every
worker) and `listen`/`unlisten` (this worker wants, or no longer wants, a topic).
What arrives is handed to `deliver_local`, which frames the event once and gives
the frame to the hub. Backends: `memory` (one worker) and `redis` (many).
"""
from __future__ import annotations

import time

from .. import metrics
from ..hub import channel_topic, user_topic
from ..wsframes import text_frame


class BrokerUnavailable(Exception):
    """The event could not be handed to the cross-worker transport."""


def route_topics(route) -> list[str]:
    return [channel_topic(k) for k in route.channels] + [user_topic(u) for u in route.users]


class Broker:
    name = "base"

    def __init__(self, hub):
        self.hub = hub
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

    def deliver_local(self, topics, payload: bytes, published_at: float | None = None) -> int:
        frame = text_frame(payload)             # framed once per event, on this worker
        delivered, dropped = self.hub.deliver(topics, frame)
        if delivered:
            metrics.EVENTS_DELIVERED.inc(delivered)
            metrics.FRAMES_OUT.inc(delivered)
        if dropped:
            metrics.DELIVERIES_DROPPED.inc(dropped)
        if published_at is not None:
            metrics.DELIVERY_SECONDS.observe(max(0.0, time.time() - published_at))
        return delivered


def open_broker(settings, hub) -> Broker:
    if settings.redis_url:
        from .redis import RedisBroker
        return RedisBroker(hub, settings.redis_url, settings.redis_prefix)
    from .memory import MemoryBroker
    return MemoryBroker(hub)
