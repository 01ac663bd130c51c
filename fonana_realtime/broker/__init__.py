"""How an event reaches every worker.

A broker publishes (`publish`: send an event towards its route's topics, on every
worker), listens (`listen`/`unlisten`: this worker wants, or no longer wants, a
topic) and hands every publication that reaches this worker to ONE callback,
`on_message(wire.Message)`, set by fanout.py. It never reads the hub and never frames
or writes anything for a client. Backends: `memory` (one worker) and `redis` (many).

Positions (PROTOCOL.md 7): `publish` returns the event's `{stream: offset}`; `position`
and `history` answer for a stream. A broker without history answers `(None, 0)` and
"not recoverable: unavailable".
"""
from __future__ import annotations

from ..history import UNAVAILABLE, Recovery


# The position of a stream that has no history anywhere yet (only a broker that sees every
# publication can say so: the in-process one): every event it will hold comes later. Its
# epoch is one no stream has.
NO_HISTORY = ("", 0)


class BrokerUnavailable(Exception):
    """The event could not be handed to the cross-worker transport."""


class Broker:
    name = "base"
    # The Redis client of this broker's link (any REDIS_URL topology), for what a worker
    # keeps in the same Redis beside the events: resume marks, push claims, revocations,
    # presence. None in process: those stay in the worker.
    client = None

    def __init__(self):
        self.on_message = lambda message: None     # replaced by Fanout
        # control messages (control.py): every worker of every host gets each one
        self.on_control = lambda data: None
        # the control channel is heard (again, after a lost link): what was sent meanwhile
        # must be read from where it is kept
        self.on_control_link = lambda: None

    def start(self):
        """Begin listening (called once in the worker, after fork)."""

    def stop(self):
        """Stop listening."""

    def publish(self, route, payload: bytes) -> dict:
        """Send one serialised event (JSON bytes) to every worker holding its topics;
        returns its positions `{stream: offset}` (empty without history)."""
        raise NotImplementedError

    def publish_control(self, data: bytes) -> None:
        """Hand one control message (bytes) to `on_control` of every worker, this one
        included; BrokerUnavailable if it cannot be sent."""
        raise NotImplementedError

    def position(self, stream: str) -> tuple:
        """(epoch, top offset) of `stream`; (None, 0) without history."""
        return None, 0

    def join_position(self, stream: str):
        """Where a connection about to join `stream` starts in it, asked right before the
        join (nothing yields between the two): a function to call once the join is done,
        which answers the (epoch, offset) after which every event of the stream reaches the
        connection, NO_HISTORY, or None when no position was read. A broker that can tell
        from what it already holds answers without a round trip; one whose join reads the
        position anyway (Redis: before its first SUBSCRIBE of the stream) answers that."""
        position = self.position(stream)
        return lambda: position

    def history(self, stream: str, epoch, since: int, limit: int) -> Recovery:
        """The events (wire.Message, positions filled) of `stream` after offset `since`
        of `epoch`: all of them, or none with the reason. May wait (bounded)."""
        return Recovery(False, None, 0, reason=UNAVAILABLE)

    def listen(self, topic: str):
        """This worker's first subscriber of `topic`: may wait (bounded) until messages
        for it are sure to arrive."""
        raise NotImplementedError

    def wait_listening(self, topic: str):
        """A later subscriber of `topic`: waits only while the first one's `listen` is
        still unconfirmed."""

    def unlisten(self, topic: str):
        raise NotImplementedError

    def link_state(self) -> str:
        """The link's state without a round trip (readiness.py's words), for operators."""
        return "ok"

    def ready(self) -> tuple[bool, str]:
        """Whether events can flow now, and a short reason if not."""
        return True, "ok"


def open_broker(settings) -> Broker:
    if settings.redis_url:
        from .redis import RedisBroker
        return RedisBroker(settings.redis_url, settings.redis_prefix,
                           history_size=settings.history_size,
                           history_seconds=settings.history_seconds,
                           history_meta_seconds=settings.history_meta_seconds,
                           recovery_max=settings.recovery_max)
    from ..history import MemoryHistory
    from .memory import MemoryBroker
    return MemoryBroker(MemoryHistory(settings.history_size, settings.history_seconds,
                                      settings.history_meta_seconds,
                                      max_streams=settings.history_max_streams,
                                      max_bytes=settings.history_max_bytes))
