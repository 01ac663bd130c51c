"""Positions and a short history per stream, in process (PROTOCOL.md 7).

Each stream (`post_P`, `user_U`, ...) has an epoch and consecutive offsets 1, 2, 3...;
it keeps its last `size` events for `seconds`, and its meta (epoch, top offset) for
`meta_seconds` after it was last used. A stream whose meta is forgotten comes back
with a NEW epoch (this broker's random base + a creation counter), so a client that
held an offset of the old one is told `recovered: false`, never given wrong events.

Bounded: events per stream <= size, and only streams published to within `seconds`
hold any; metas live `meta_seconds` after their last use. `sweep` (every few seconds
from the broker) forgets both in O(what expired), oldest first, never a full scan.
"""
from __future__ import annotations

import time
import uuid
from collections import OrderedDict, deque

# Why a recovery failed (metric label and the `reason` kept in logs).
EPOCH, TRIMMED, EXPIRED, TOO_MANY, AHEAD, UNAVAILABLE = (
    "epoch", "trimmed", "expired", "too_many", "ahead", "unavailable")


class Recovery:
    """The answer of `history`: ok with the events after the offset (maybe none), or
    not ok with a reason; and the stream's current (epoch, top)."""

    __slots__ = ("ok", "events", "reason", "epoch", "top")

    def __init__(self, ok: bool, epoch: str, top: int, events=(), reason: str | None = None):
        self.ok, self.epoch, self.top, self.events, self.reason = ok, epoch, top, list(events), reason

    def __repr__(self):
        return f"Recovery(ok={self.ok}, reason={self.reason}, epoch={self.epoch}, top={self.top}, n={len(self.events)})"


class _Stream:
    __slots__ = ("epoch", "top", "events", "touched", "trimmed_to")

    def __init__(self, epoch: str, now: float):
        self.epoch = epoch
        self.top = 0
        # The held wire.Messages themselves, oldest first; None while empty. A message
        # knows its offset (`positions[stream]`) and its time (`published_at`): no
        # per-event tuple (measured: -116 B per held event).
        self.events: deque | None = None
        self.touched = now
        self.trimmed_to = 0                 # highest offset dropped because of `size`


class MemoryHistory:
    def __init__(self, size: int = 100, seconds: float = 300.0, meta_seconds: float = 86400.0,
                 clock=time.time):
        self.size = max(0, size)
        self.seconds = seconds
        self.meta_seconds = meta_seconds
        self.clock = clock
        self.base = "m" + uuid.uuid4().hex[:10]     # new per process start: a new epoch
        self._created = 0
        self._streams: OrderedDict[str, _Stream] = OrderedDict()   # by last use, oldest first
        self._live: OrderedDict[str, _Stream] = OrderedDict()      # holding events, by last append
        self.events_held = 0
        self.payload_bytes = 0

    # ---- writing ---------------------------------------------------------------------

    def _stream(self, name: str, now: float) -> _Stream:
        stream = self._streams.get(name)
        if stream is None:
            self._created += 1
            stream = self._streams[name] = _Stream(f"{self.base}-{self._created}", now)
        else:
            stream.touched = now
            self._streams.move_to_end(name)
        return stream

    def append(self, name: str, message) -> tuple[str, int]:
        """The next position of `name` for `message` (also written into
        `message.positions`); the message is kept as the stream's history. Its
        `published_at` (wall clock, as `clock`) is its age."""
        now = self.clock()
        if message.published_at is None:
            message.published_at = now
        stream = self._stream(name, now)
        stream.top += 1
        position = message.positions[name] = (stream.epoch, stream.top)
        if self.size:
            events = stream.events
            if events is None:
                events = stream.events = deque()
            events.append(message)
            self.events_held += 1
            self.payload_bytes += len(message.payload)
            if len(events) > self.size:
                dropped = events.popleft()
                stream.trimmed_to = dropped.positions[name][1]
                self._forgot(dropped)
            self._live[name] = stream
            self._live.move_to_end(name)
        return position

    # ---- reading ---------------------------------------------------------------------

    def position(self, name: str) -> tuple[str, int]:
        stream = self._stream(name, self.clock())
        return stream.epoch, stream.top

    def peek(self, name: str) -> tuple[str, int] | None:
        """(epoch, top) of a stream this process knows, None for one it does not: unlike
        `position`, it creates nothing (legacy resume asks for every stream a connection
        joins; a stream made per idle connection cost ~300 B each)."""
        stream = self._streams.get(name)
        return None if stream is None else (stream.epoch, stream.top)

    def history(self, name: str, epoch, since: int, limit: int) -> Recovery:
        """The events of `name` after offset `since` of `epoch`: all of them, or none
        with the reason (all or nothing: never a partial replay)."""
        now = self.clock()
        stream = self._stream(name, now)
        self._expire(name, stream, now)
        if epoch != stream.epoch:
            return Recovery(False, stream.epoch, stream.top, reason=EPOCH)
        if since > stream.top or since < 0:
            return Recovery(False, stream.epoch, stream.top, reason=AHEAD)
        missed = stream.top - since
        if missed == 0:
            return Recovery(True, stream.epoch, stream.top)
        if missed > limit:
            return Recovery(False, stream.epoch, stream.top, reason=TOO_MANY)
        events = stream.events
        first = events[0].positions[name][1] if events else stream.top + 1
        if since + 1 < first:
            reason = TRIMMED if since + 1 <= stream.trimmed_to else EXPIRED
            return Recovery(False, stream.epoch, stream.top, reason=reason)
        skip = since + 1 - first
        return Recovery(True, stream.epoch, stream.top,
                        [events[i] for i in range(skip, len(events))])

    # ---- forgetting ------------------------------------------------------------------

    def _expire(self, name: str, stream: _Stream, now: float):
        events = stream.events
        if not events:
            return
        limit = now - self.seconds
        while events and events[0].published_at <= limit:
            self._forgot(events.popleft())
        if not events:
            stream.events = None
            self._live.pop(name, None)

    def sweep(self):
        """Forget expired events and metas, oldest first; stops at the first fresh one."""
        now = self.clock()
        live = self._live
        while live:
            name, stream = next(iter(live.items()))
            events = stream.events
            if events and events[-1].published_at > now - self.seconds:
                break                          # its newest is fresh: so are all later streams'
            self._expire(name, stream, now)
            live.pop(name, None)
        streams = self._streams
        while streams:
            name, stream = next(iter(streams.items()))
            if stream.touched > now - self.meta_seconds:
                break
            del streams[name]
            if stream.events:
                for message in stream.events:
                    self._forgot(message)
                self._live.pop(name, None)

    def _forgot(self, message):
        self.events_held -= 1
        self.payload_bytes -= len(message.payload)

    # ---- measuring -------------------------------------------------------------------

    def counts(self) -> tuple[int, int]:
        """(streams with a meta, events held)."""
        return len(self._streams), self.events_held

    def approx_bytes(self) -> int:
        """A cheap estimate for the gauge (no walk over the objects; the per-object
        overheads were measured by bench/inprocess_history_memory.py)."""
        return (len(self._streams) * STREAM_OVERHEAD + self.events_held * EVENT_OVERHEAD
                + self.payload_bytes)


# Measured with tracemalloc by bench/inprocess_history_memory.py (CPython 3.11): bytes per stream
# meta, and per held event besides its payload.
STREAM_OVERHEAD = 300
EVENT_OVERHEAD = 620
