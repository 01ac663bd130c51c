"""How an event reaches every worker.

A broker publishes (`publish`: send an event towards its route's topics, on every
worker), listens (`listen`/`unlisten`: this worker wants, or no longer wants, a
topic) and hands every publication that reaches this worker to ONE callback,
`on_message(wire.Message)`, set by fanout.py. It never reads the hub and never frames
or writes anything for a client. Backends: `memory` (one worker) and `redis` (many).
"""
from __future__ import annotations


class BrokerUnavailable(Exception):
    """The event could not be handed to the cross-worker transport."""


class Broker:
    name = "base"

    def __init__(self):
        self.on_message = lambda message: None     # replaced by Fanout

    def start(self):
        """Begin listening (called once in the worker, after fork)."""

    def stop(self):
        """Stop listening."""

    def publish(self, route, payload: bytes):
        """Send one serialised event (JSON bytes) to every worker holding its topics."""
        raise NotImplementedError

    def listen(self, topic: str):
        """This worker's first subscriber of `topic`: may wait (bounded) until messages
        for it are sure to arrive."""
        raise NotImplementedError

    def wait_listening(self, topic: str):
        """A later subscriber of `topic`: waits only while the first one's `listen` is
        still unconfirmed."""

    def unlisten(self, topic: str):
        raise NotImplementedError

    def ready(self) -> tuple[bool, str]:
        """Whether events can flow now, and a short reason if not."""
        return True, "ok"


def open_broker(settings) -> Broker:
    if settings.redis_url:
        from .redis import RedisBroker
        return RedisBroker(settings.redis_url, settings.redis_prefix)
    from .memory import MemoryBroker
    return MemoryBroker()
