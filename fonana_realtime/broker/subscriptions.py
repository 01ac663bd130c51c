"""Which topics a worker's Redis listener must hear, and what it has asked Redis for:
the bookkeeping of "subscribed means delivered" (redis.py), without Redis.

- *wanted*: the topics fanout asked for (`want`, until `unwant`): those with local
  connections.
- *written*: a topic whose SUBSCRIBE went out on a connection, with the Event that its
  acknowledgement sets (pubsub.py pairs replies with commands).
- *waiting*: a first subscriber's Event for a SUBSCRIBE not written yet.
- *dirty*: topics to look at in the next flush (`plan`).

Client greenlets call `want`/`unwant`/`waiter`; only the listener greenlet calls the rest.
tests/unit/test_broker_subscriptions.py drives it alone.
"""
from __future__ import annotations

from gevent.event import Event


class Plan:
    """What one flush writes: {shard: [(topic, Event)]} to subscribe, {shard: [topic]} to
    unsubscribe; `unheard`: shards that serve wanted topics but have no connection now
    (those topics wait for a rejoin); `dropped`: topics no longer wanted."""

    __slots__ = ("subscribe", "unsubscribe", "unheard", "dropped")

    def __init__(self):
        self.subscribe: dict[str, list] = {}
        self.unsubscribe: dict[str, list] = {}
        self.unheard: set[str] = set()
        self.dropped: list[str] = []

    def topics(self) -> list[str]:
        return [topic for items in self.subscribe.values() for topic, _ in items]


class Subscriptions:
    def __init__(self):
        self.wanted: set[str] = set()
        self._written: dict[str, Event] = {}     # topic -> Event of its SUBSCRIBE on the link now
        self._waiting: dict[str, Event] = {}     # topic -> Event for a SUBSCRIBE not yet written
        self._dirty: set[str] = set()

    # ---- client greenlets --------------------------------------------------------------

    def want(self, topic: str) -> Event:
        """A first local subscriber: the Event that says Redis acknowledged its SUBSCRIBE."""
        self.wanted.add(topic)
        self._dirty.add(topic)
        event = self._written.get(topic) or self._waiting.get(topic)
        if event is None:
            event = self._waiting[topic] = Event()
        return event

    def waiter(self, topic: str) -> Event | None:
        """A later subscriber: the Event of the SUBSCRIBE on its way, if any."""
        return self._written.get(topic) or self._waiting.get(topic)

    def unwant(self, topic: str):
        self.wanted.discard(topic)
        self._dirty.add(topic)

    def acknowledged(self, topic: str) -> bool | None:
        """None: no SUBSCRIBE written on this link; else whether Redis acknowledged it."""
        event = self._written.get(topic)
        return None if event is None else event.is_set()

    # ---- the listener ------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    @property
    def written(self) -> int:
        return len(self._written)

    def look_again(self):
        """A new connection: every wanted topic not heard yet may be subscribed now."""
        self._dirty.update(self.wanted)

    def plan(self, shard_of, heard) -> Plan:
        """The commands the changed topics need: `shard_of(topic)` names the shard that
        serves it, `heard(shard)` whether a connection to it is up. A topic whose shard is
        not heard waits (its first subscriber is released: it does not wait on a shard that
        is down). The Events handed out are the topics' `written` Events from now on."""
        dirty, self._dirty = self._dirty, set()
        plan = Plan()
        for topic in dirty:
            if topic in self.wanted:
                if topic in self._written:
                    continue
                shard = shard_of(topic)
                if not heard(shard):
                    plan.unheard.add(shard)
                    _release(self._waiting.pop(topic, None))
                    continue
                event = self._waiting.pop(topic, None) or Event()
                self._written[topic] = event
                plan.subscribe.setdefault(shard, []).append((topic, event))
            else:
                _release(self._waiting.pop(topic, None))
                if self._written.pop(topic, None) is not None:
                    plan.unsubscribe.setdefault(shard_of(topic), []).append(topic)
                plan.dropped.append(topic)
        return plan

    def connection_lost(self, topics) -> list[str]:
        """One connection is gone with what it carried: those of `topics` written on it are
        no longer, and the wanted ones are looked at again. Returns the ones it carried."""
        carried = [topic for topic in topics if self._written.pop(topic, None) is not None]
        self._dirty.update(topic for topic in carried if topic in self.wanted)
        return carried

    def link_lost(self):
        """The whole link is gone: nobody waits on it; the next one subscribes all wanted."""
        for event in self._waiting.values():
            event.set()
        self._written.clear()
        self._waiting.clear()


def _release(event):
    if event is not None:
        event.set()
