"""Positions and a short history per stream, in process (PROTOCOL.md 7).

Each stream (`post_P`, `user_U`, ...) has an epoch and consecutive offsets 1, 2, 3...;
it keeps its last `size` events for `seconds`, and its meta (epoch, top offset) for
`meta_seconds` after it was last used. A stream whose meta is forgotten comes back
with a NEW epoch (this broker's random base + a creation counter), so a client that
held an offset of the old one is told `recovered: false`, never given wrong events.

State is made by publishing. A position asked of a stream nobody published to makes a
*ghost* (an epoch, top 0: what the subscriber is told, and what the first publish keeps,
so that subscriber can still recover it) that lives while the worker holds the stream
(`hold`/`release`, from the broker's listen/unlisten) and `ghost_seconds` after; the
first publish makes it a stream. Before, every such read kept ~300 B for a day
(5,517 v2 subscribes to ids nobody publishes to: +3.8 MB for 24 h, issue 18).

Bounded in total (issue 18: 50,000 events to distinct posts had added 92 MB): at most
`max_streams` metas (ghosts included) and `max_bytes` of estimated memory (metas, events,
payloads). Past either, on the write that passes it: the events of the stream appended
to least recently are dropped (its recoveries then fail as `trimmed`), then whole
streams, ghosts first, then the least recently used (back with a new epoch: `epoch`).
Never a partial or a wrong replay. Per stream: events <= size, and only streams published
to within `seconds` hold any. `sweep` (every few seconds from the broker) forgets expired
events, metas and ghosts in O(what expired), oldest first, never a full scan.
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


# Defaults of WS_HISTORY_MAX_STREAMS and WS_HISTORY_MAX_BYTES (settings.py), and how long a
# ghost outlives its last subscriber (the same minute as redis_history.GHOST_SECONDS).
MAX_STREAMS = 100_000               # ~30 MB of metas at ~300 B each
MAX_BYTES = 128 * 1024 * 1024
GHOST_SECONDS = 60.0


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
                 clock=time.time, *, max_streams: int = MAX_STREAMS, max_bytes: int = MAX_BYTES,
                 ghost_seconds: float = GHOST_SECONDS):
        self.size = max(0, size)
        self.seconds = seconds
        self.meta_seconds = meta_seconds
        self.ghost_seconds = ghost_seconds
        self.max_streams = max(1, max_streams)
        self.max_bytes = max_bytes
        self.clock = clock
        self.base = "m" + uuid.uuid4().hex[:10]     # new per process start: a new epoch
        self._created = 0
        self._streams: OrderedDict[str, _Stream] = OrderedDict()   # published to, by last use
        self._ghosts: OrderedDict[str, _Stream] = OrderedDict()    # never published to, by last use
        self._held: set[str] = set()                                # streams the worker listens to
        self._live: OrderedDict[str, _Stream] = OrderedDict()      # holding events, by last append
        self.events_held = 0
        self.payload_bytes = 0
        self.evicted_streams = 0            # totals, for the metrics (the broker reads them)
        self.evicted_events = 0

    # ---- writing ---------------------------------------------------------------------

    def _new(self, now: float) -> _Stream:
        self._created += 1
        return _Stream(f"{self.base}-{self._created}", now)

    def _known(self, name: str, now: float) -> _Stream:
        """The stream or ghost `name`, touched; a new ghost if it has neither."""
        for table in (self._streams, self._ghosts):
            stream = table.get(name)
            if stream is not None:
                stream.touched = now
                table.move_to_end(name)
                return stream
        stream = self._ghosts[name] = self._new(now)
        self._bound()
        return stream

    def append(self, name: str, message) -> tuple[str, int]:
        """The next position of `name` for `message` (also written into
        `message.positions`); the message is kept as the stream's history. Its
        `published_at` (wall clock, as `clock`) is its age."""
        now = self.clock()
        if message.published_at is None:
            message.published_at = now
        stream = self._streams.get(name)
        if stream is not None:
            stream.touched = now
            self._streams.move_to_end(name)
        else:
            # the first publish: a ghost's epoch is kept (its subscribers were told it)
            stream = self._ghosts.pop(name, None) or self._new(now)
            stream.touched = now
            self._streams[name] = stream
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
        self._bound()
        return position

    # ---- holding (the broker's listen / unlisten) ---------------------------------------

    def hold(self, name: str):
        """This worker has subscribers of `name`: its ghost, if any, does not expire."""
        self._held.add(name)

    def release(self, name: str):
        """No subscriber left: a ghost lives `ghost_seconds` from now."""
        self._held.discard(name)
        ghost = self._ghosts.get(name)
        if ghost is not None:
            ghost.touched = self.clock()
            self._ghosts.move_to_end(name)

    # ---- reading ---------------------------------------------------------------------

    def position(self, name: str) -> tuple[str, int]:
        stream = self._known(name, self.clock())
        return stream.epoch, stream.top

    def peek(self, name: str) -> tuple[str, int] | None:
        """(epoch, top) of a stream published to, None for one that never was (a ghost
        included): unlike `position`, it creates nothing (legacy resume asks for every
        stream a connection joins; a stream made per idle connection cost ~300 B each),
        and None means "every event it will hold is newer" (resume.FRESH)."""
        stream = self._streams.get(name)
        return None if stream is None else (stream.epoch, stream.top)

    def history(self, name: str, epoch, since: int, limit: int) -> Recovery:
        """The events of `name` after offset `since` of `epoch`: all of them, or none
        with the reason (all or nothing: never a partial replay)."""
        now = self.clock()
        stream = self._known(name, now)
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
        """Forget expired events, metas and ghosts, oldest first; stops at the first fresh one."""
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
            self._drop_stream(name)
        ghosts = self._ghosts
        while ghosts:
            name, ghost = next(iter(ghosts.items()))
            if ghost.touched > now - self.ghost_seconds:
                break
            if name in self._held:             # still subscribed: keep, look again in a while
                ghost.touched = now
                ghosts.move_to_end(name)
            else:
                del ghosts[name]

    def _bound(self):
        """Back under `max_streams` and `max_bytes`: events first (the stream appended to
        least recently loses them all), then streams (ghosts, then the least used)."""
        while self.approx_bytes() > self.max_bytes and self._live:
            name, stream = self._live.popitem(last=False)
            stream.trimmed_to = stream.events[-1].positions[name][1]
            self.evicted_events += len(stream.events)
            for message in stream.events:
                self._forgot(message)
            stream.events = None
        while (len(self._streams) + len(self._ghosts) > self.max_streams
               or (self.approx_bytes() > self.max_bytes and (self._streams or self._ghosts))):
            self.evicted_streams += 1
            if self._ghosts:
                self._ghosts.popitem(last=False)
            else:
                self._drop_stream(next(iter(self._streams)))

    def _drop_stream(self, name: str):
        stream = self._streams.pop(name)
        if stream.events:
            for message in stream.events:
                self._forgot(message)
            self._live.pop(name, None)

    def _forgot(self, message):
        self.events_held -= 1
        self.payload_bytes -= len(message.payload)

    # ---- measuring -------------------------------------------------------------------

    def counts(self) -> tuple[int, int]:
        """(streams with a meta, ghosts included; events held)."""
        return len(self._streams) + len(self._ghosts), self.events_held

    def approx_bytes(self) -> int:
        """A cheap estimate for the gauge and the bound (no walk over the objects; the
        per-object overheads were measured by bench/inprocess_history_memory.py)."""
        return ((len(self._streams) + len(self._ghosts)) * STREAM_OVERHEAD
                + self.events_held * EVENT_OVERHEAD + self.payload_bytes)


# Measured with tracemalloc by bench/inprocess_history_memory.py (CPython 3.11): bytes per stream
# meta, and per held event besides its payload.
STREAM_OVERHEAD = 300
EVENT_OVERHEAD = 620
