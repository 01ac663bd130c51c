"""Catching up after a lost link: what a worker has handed on, and what it must read from
history when its link to Redis comes back (issue 9, item 4; issue 21: a failover is one
more lost link). Pure logic, no Redis and no gevent: the broker (redis.py) reads the
history and hands the answers in; tests/unit/test_broker_catchup.py drives it directly.

Per stream this worker hears, its *mark*: the (epoch, offset) up to which it has handed
everything on. It starts at the stream's position read right before the stream's first
SUBSCRIBE (its *baseline*, which also tells a legacy connection where it joined) and moves
with every message handed on. While a new link catches up, live messages are *held*; once
every SUBSCRIBE of the link is acknowledged, each stream's history after its mark is read,
handed on in order, then the held live messages, each only if it is newer than its
stream's mark (so an event comes once, whether replayed, live or both).

A stream whose epoch changed (Redis lost its data, or a failover made a new epoch) is read
again from the start of its new epoch: every event in it is newer than the loss. A stream
whose missed events are gone (trimmed, expired, too many) gives up: its mark moves to just
before the first held live event (or its top), so the live ones still go out.
"""
from __future__ import annotations

import heapq

from ..history import EPOCH


class Catchup:
    def __init__(self):
        self.marks: dict[str, tuple[str, int]] = {}      # stream -> (epoch, offset) handed on up to
        # stream -> its position read before its first SUBSCRIBE, until a join takes it
        # (take_baseline) or the stream is no longer heard
        self._baselines: dict[str, tuple[str, int]] = {}
        self.catching_up = False            # a new link: hold live messages until caught up
        self._held: list = []               # live Messages received while catching up

    # ---- the link --------------------------------------------------------------------

    def link_up(self):
        """A new link: live messages wait until it caught up."""
        self.catching_up = True
        self._held = []

    def link_lost(self):
        """Held messages came on a dead link: the next catch-up reads them from history."""
        self._held = []

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
        """A live message: True if it goes on now; held while catching up."""
        if self.catching_up:
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
        """(stream, epoch, offset) to read history after, for every held stream."""
        return [(stream, epoch, offset) for stream, (epoch, offset) in self.marks.items() if hears(stream)]

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
        held, self._held = self._held, []
        out += [message for message in held if self.fresh(message, hears)]
        return out, count
