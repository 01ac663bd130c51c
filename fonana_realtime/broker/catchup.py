"""Catching up after a lost link: what a worker has handed on, and what it must read from
history when its link to Redis comes back (issue 9, item 4; issue 21: a failover is one
more lost link). Pure logic, no Redis and no gevent: the broker (redis.py) reads the
history and hands the answers in; tests/unit/test_broker_catchup.py drives it directly.

Per stream this worker hears, its *mark*: the (epoch, offset) up to which it has handed
everything on. It starts at the stream's position read right before the stream's first
SUBSCRIBE (its *baseline*, which also tells a legacy connection where it joined) and moves
with every message handed on. A stream subscribed again on a new connection (the whole link
was lost, or only its shard's connection on a Cluster) is *catching up*: its live messages
are *held*; once every SUBSCRIBE written is acknowledged, each catching stream's history
after its mark is read, handed on in order, then the held live messages, each only if it is
newer than its stream's mark (so an event comes once, whether replayed, live or both). The
other streams' messages go on meanwhile: on a Cluster, one shard's failover does not hold
up the others.

A stream whose epoch changed (Redis lost its data, or a failover made a new epoch) is read
again from the start of its new epoch: every event in it is newer than the loss. A stream
whose missed events are gone (trimmed, expired, too many) gives up: its mark moves to just
before the first held live event (or its top), so the live ones still go out.
"""
from __future__ import annotations

import heapq

from ..history import EPOCH
from ..wire import topic_stream


class Catchup:
    def __init__(self):
        self.marks: dict[str, tuple[str, int]] = {}      # stream -> (epoch, offset) handed on up to
        # stream -> its position read before its first SUBSCRIBE, until a join takes it
        # (take_baseline) or the stream is no longer heard
        self._baselines: dict[str, tuple[str, int]] = {}
        self.catching_up = False            # a catch-up is due once the SUBSCRIBEs are acknowledged
        self._catching: set[str] = set()    # streams whose live messages are held until then
        self._held: list = []               # those live Messages, in arrival order

    # ---- the link --------------------------------------------------------------------

    def link_up(self):
        """A new link: every marked stream catches up, live messages wait until it did."""
        self.catching_up = True
        self._catching = set(self.marks)
        self._held = []

    def resubscribed(self, streams):
        """`streams` are subscribed again on a new connection (a shard's, on a Cluster):
        they catch up; the other streams' messages go on."""
        self.catching_up = True
        self._catching.update(streams)

    def link_lost(self):
        """Held messages came on a dead link: the next catch-up reads them from history."""
        self._held = []
        self._catching = set()
        self.catching_up = False

    def shard_lost(self, streams):
        """The connection that carried `streams` is gone (one shard's, on a Cluster): their
        held messages came on it, and the catch-up after their next SUBSCRIBE reads them
        from history. The other streams' catch-up is not held up by them."""
        streams = set(streams)
        self._catching -= streams
        self._held = [m for m in self._held if not streams.intersection(_streams_of(m))]

    # ---- marks and baselines -----------------------------------------------------------

    def mark(self, stream: str):
        return self.marks.get(stream)

    def unmarked(self, streams) -> list[str]:
        """The streams that need a baseline before their first SUBSCRIBE."""
        return [s for s in streams if s not in self.marks]

    def baseline(self, stream: str, position: tuple):
        self.marks.setdefault(stream, position)
        self._baselines[stream] = position

    def take_baseline(self, stream: str):
        return self._baselines.pop(stream, None)

    def forget(self, stream: str):
        """No longer heard here."""
        self.marks.pop(stream, None)
        self._baselines.pop(stream, None)

    # ---- messages ----------------------------------------------------------------------

    def receive(self, message, hears) -> bool:
        """A live message: True if it goes on now; held while a stream it names catches
        up. Its other streams are held from then on too (a union: a later message of one
        of them must not overtake it)."""
        if self._catching:
            streams = _streams_of(message)
            if not self._catching.isdisjoint(streams):
                self._catching.update(s for s in streams if hears(s))
                self._held.append(message)
                return False
        return self.fresh(message, hears)

    def fresh(self, message, hears) -> bool:
        """Whether `message` goes on, moving the marks: not when every stream it names that
        this worker marks is already handed on up to its offset (a live copy of an event
        the catch-up replayed). `hears(stream)`: this worker holds it (a stream without a
        mark gets one then)."""
        positions = message.positions
        if not positions:
            return True
        marks = self.marks
        fresh = known = False
        for stream, (epoch, offset) in positions.items():
            mark = marks.get(stream)
            if mark is None:
                if hears(stream):
                    marks[stream] = (epoch, offset)
                    fresh = True
                continue
            known = True
            if mark[0] != epoch or offset > mark[1]:
                marks[stream] = (epoch, offset)
                fresh = True
        return fresh or not known

    # ---- one catch-up --------------------------------------------------------------------

    def requests(self, hears) -> list[tuple[str, str, int]]:
        """(stream, epoch, offset) to read history after, for every catching stream heard."""
        marks = self.marks
        return [(stream, *marks[stream]) for stream in sorted(self._catching) if stream in marks and hears(stream)]

    def first_held(self) -> dict:
        """(stream, epoch) -> the first offset received live while catching up."""
        first: dict = {}
        for message in self._held:
            for stream, position in message.positions.items():
                first.setdefault((stream, position[0]), position[1])
        return first

    def settle(self, stream: str, rec, first_held: dict, lost: dict, *, again: bool):
        """One stream's history answer (a redis_history.StoredRead) that is not ok: the
        request to read the whole new epoch when its epoch changed (once: `again`
        False), else None after giving up (the mark moved, `lost` counts the reason)."""
        if rec.reason == EPOCH and not again:
            return (stream, rec.epoch, 0)
        first = first_held.get((stream, rec.epoch))
        self.marks[stream] = (rec.epoch, rec.top if first is None else first - 1)
        reason = rec.reason or "unknown"
        lost[reason] = lost.get(reason, 0) + 1
        return None

    def finish(self, replayed: list[list], hears) -> tuple[list, int]:
        """Caught up: the messages to hand on, in order (the replayed ones merged by
        publication time, then the held live ones; each only if fresh), and how many
        replayed ones are among them. Live messages go on at once from here."""
        out = []
        for message in heapq.merge(*replayed, key=lambda m: m.published_at or 0.0):
            if self.fresh(message, hears):
                out.append(message)
        count = len(out)
        self.catching_up = False
        self._catching = set()
        held, self._held = self._held, []
        out += [message for message in held if self.fresh(message, hears)]
        return out, count


def _streams_of(message):
    """The streams a message names: its positions' (or, without positions, its topics')."""
    if message.positions:
        return message.positions.keys()
    return [topic_stream(t) for t in message.topics]
