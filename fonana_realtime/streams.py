"""Where one connection stands on each stream it holds, and the one replay-then-live.

A connection's `Streams` owns (other modules call its methods, never write these):

- `marks`: stream -> (epoch, offset) of the last event written to it. v2 skips an event
  at or before it (a replay sent it); legacy resume keeps it when the connection drops
  (pacing moves it only on a real write, `written`).
- `joined`: v2 only, stream -> (epoch, offset) the connection was told when it joined the
  stream (welcome, `subscribed`): what came after it was written live.
- `buffers`: stream -> [Outgoing], the live events of a stream that wait while it replays.

It delivers a connection's events (`delivery`: the legacy or the v2 way, picked once when
the connection is made) and holds the one routine by which a stream is replayed and then
goes live, which v2 recovery (`since`, `recover`; fanout.Fanout.recover) and legacy
automatic resume (resume.Resume.after_join) both call: `replay_then_live`.
"""
from __future__ import annotations

from . import metrics
from .outgoing import Outgoing

# A v2 replay whose buffered live events start beyond the replayed ones (a gap: the
# broker lost messages while the replay ran) reads history again, at most this many times.
GAP_REREADS = 2


class Streams:
    __slots__ = ("conn", "v2", "user_stream", "channels", "marks", "joined", "buffers")

    def __init__(self, conn, v2: bool):
        self.conn = conn                  # writes go through its one write path
        self.v2 = v2
        self.user_stream = conn.user_stream
        self.channels = conn.channels     # the channels it holds (Connection.hold_channel...)
        self.marks: dict = {}
        self.joined: dict = {}
        self.buffers: dict = {}

    def delivery(self):
        """The connection's one entry point for events (Connection.deliver): the legacy or
        the v2 way, decided once, so no delivery asks. Not kept in a slot of this object:
        its own bound method there was a reference cycle (Streams -> method -> Streams)
        that only the cyclic collector freed (bench/connection_cycles.py)."""
        return self._deliver_v2 if self.v2 else self._deliver_legacy

    # ---- which stream -----------------------------------------------------------------

    def stream_of(self, out) -> str | None:
        """The first stream of the event's route that this connection holds."""
        for stream in out.streams:
            if stream == self.user_stream or stream in self.channels:
                return stream
        return None

    # ---- positions ---------------------------------------------------------------------

    def mark(self, stream: str):
        return self.marks.get(stream)

    def set_mark(self, stream: str, position) -> None:
        self.marks[stream] = position

    def left(self, stream: str) -> None:
        """The connection no longer holds `stream` (an unsubscribe): no position of it is
        kept, and a legacy connection's live marks (resume) forget it."""
        self.marks.pop(stream, None)
        self.joined.pop(stream, None)
        on_left = self.conn.on_left
        if on_left is not None:
            on_left(self.conn, (stream,))

    def join_position(self, stream: str, epoch, top: int) -> None:
        """v2: the connection is told (epoch, top) on joining `stream`; later events are the
        ones after it. A stream it already joined keeps its first position."""
        if epoch is not None and stream not in self.joined:
            self.marks[stream] = self.joined[stream] = (epoch, top)

    def held_marks(self) -> dict:
        """{stream: (epoch, offset)} for every stream it holds and knows a position of
        (what a dropped legacy connection leaves for its resume)."""
        marks = {}
        for stream in [self.user_stream] + list(self.channels):
            mark = self.marks.get(stream)
            if mark is not None and mark[0] is not None:
                marks[stream] = (mark[0], mark[1])
        return marks

    def written(self, outgoings) -> None:
        """The pacer wrote these (held) legacy events: remember their positions."""
        positions = merged_positions(outgoings)
        if positions:
            self.marks.update(positions)
            on_marks = self.conn.on_marks
            if on_marks is not None:
                on_marks(self.conn, positions.items())

    # ---- delivery --------------------------------------------------------------------

    def _deliver_legacy(self, outgoings, joined_legacy: bytes | None = None, positions=None,
                        shared_v2=None) -> bool:
        """A legacy connection: the events as they are (with pacing on, PROTOCOL.md 8, the
        pacer writes now what may go now and holds the rest); the positions move."""
        conn = self.conn
        if self.buffers:                  # a stream replays (resume.py): its live events wait
            outgoings = self.hold_replaying(outgoings)
            if not outgoings:
                return not (conn.closing or conn.closed)
            joined_legacy = positions = None
        if conn.pacer is not None:
            return conn.pacer.offer(conn, outgoings, joined_legacy)
        if joined_legacy is None:
            joined_legacy = b"".join(o.legacy for o in outgoings)
        if positions is None:
            positions = merged_positions(outgoings).items()
        if not conn.send(joined_legacy, len(outgoings)):
            return False
        if positions:
            # Pairs, not dict.update: ~55 vs ~175 ns per call on one dict. Across 1,000
            # connections it measured +~110 ns per connection per batch (each its own dict,
            # out of cache): the main per-recipient cost of positions (docs/BENCHMARKS.md).
            marks = self.marks
            for stream, position in positions:
                marks[stream] = position
            if conn.on_marks is not None:
                conn.on_marks(conn, positions)
        return True

    def hold_replaying(self, outgoings) -> list:
        """The events of streams that replay wait in their buffer; the others are returned."""
        kept = []
        buffers = self.buffers
        for out in outgoings:
            stream = self.stream_of(out)
            if stream is not None and stream in buffers:
                buffers[stream].append(out)
            else:
                kept.append(out)
        return kept

    def _deliver_v2(self, outgoings, joined_legacy: bytes | None = None, positions=None,
                    shared_v2=None) -> bool:
        """A v2 connection uses `shared_v2` (outgoing.SharedV2: the batch is on one stream)
        when it can take the whole batch as it is, else each event on its own."""
        if shared_v2 is not None and self._take_shared(outgoings, shared_v2):
            return not (self.conn.closing or self.conn.closed)
        return self._write_v2(outgoings)

    def _take_shared(self, outgoings, shared) -> bool:
        """The batch's shared joined v2 frames, if none of it is held back (no replay of
        its stream running) or already written (all offsets after this connection's
        mark): one check per batch instead of one per event. False: not taken."""
        stream = shared.stream
        if self.buffers or not (stream == self.user_stream or stream in self.channels):
            return False
        first, last = outgoings[0].positions.get(stream), outgoings[-1].positions.get(stream)
        if first is None or last is None or first[0] != last[0]:
            return False
        mark = self.marks.get(stream)
        if mark is not None and mark[0] == first[0] and mark[1] >= first[1]:
            return False                                    # some already written: per event
        if self.conn.send(shared.joined(), len(outgoings)):
            self.marks[stream] = last
        return True

    def _write_v2(self, outgoings) -> bool:
        """Each event once, under its first held stream; held back while that stream
        replays; skipped if its offset was already written (a replay sent it)."""
        frames = []
        marks = self.marks
        buffers = self.buffers
        for out in outgoings:
            stream = self.stream_of(out)
            if stream is None:
                continue
            if buffers and stream in buffers:
                buffers[stream].append(out)
                continue
            position = out.positions.get(stream)
            if position is not None:
                mark = marks.get(stream)
                if mark is not None and mark[0] == position[0] and position[1] <= mark[1]:
                    continue                                # already written
                marks[stream] = position
            if len(out.streams) > 1:
                self._mark_union(out, stream)
            frames.append(out.v2_frame(stream))
        if not frames:
            return not (self.conn.closing or self.conn.closed)
        return self.conn.send(frames[0] if len(frames) == 1 else b"".join(frames), len(frames))

    def _mark_union(self, out, sent_under: str):
        """A union sent under one stream was written for the other streams it holds too:
        a later replay of those must not send it again."""
        for stream in out.streams:
            if stream != sent_under and (stream == self.user_stream or stream in self.channels):
                position = out.positions.get(stream)
                if position is not None:
                    self.marks[stream] = position

    # ---- replay then live --------------------------------------------------------------

    def hold(self, stream: str) -> None:
        """From now on the live events of `stream` wait (legacy resume starts this before
        the connection is registered; `replay_then_live` hands them over)."""
        self.buffers[stream] = []

    def holding(self, stream: str) -> bool:
        return stream in self.buffers

    def replay_then_live(self, stream: str, since: tuple, read, reply=None, join=None, before_live=None):
        """Replay then live for one stream, all or nothing: v2 recovery and legacy resume.

        The live events of `stream` wait in its buffer from before `join()` (a v2
        subscribe; legacy resume held them with `hold` before the connection was even
        registered). `read(epoch, offset)` answers the history after `since` (a
        history.Recovery; None: history unreachable); `reply(recovery)` (v2's
        `subscribed`/`recovered`) is written before the replayed events. Then the events
        after `since` that this connection has not had, then the live ones that waited,
        less those the replay held, with no yield in between: nothing live overtakes.
        `before_live(recovery, replayed)` runs right before that handover (legacy resume's
        accounts). Returns the recovery."""
        v2 = self.v2
        buffers = self.buffers
        if stream not in buffers:
            buffers[stream] = []
        try:
            if join is not None:
                join()
            recovery = read(*since)
            if v2:
                if self.conn.closing or self.conn.closed:
                    return recovery
                reply(recovery)
            replay = self._replay(stream, since[1], recovery, v2)
            if v2 and recovery.ok:
                for _ in range(GAP_REREADS):
                    if not self._gap(stream):
                        break
                    mark = self.marks[stream]
                    again = read(mark[0], mark[1])
                    if not again.ok:
                        break
                    self._replay(stream, mark[1], again, v2)
            self._go_live(stream, since[1], recovery, replay, v2, before_live)
            return recovery
        finally:
            buffers.pop(stream, None)

    def _replay(self, stream: str, since: int, recovery, v2: bool) -> list:
        """The held events after `since` that this connection has not had yet: written at
        once (v2: framed for the stream, the marks moved), or returned to go with the
        live ones through the connection's delivery (legacy: paced, marks moved when
        written)."""
        if recovery is None or not recovery.ok:
            if v2 and recovery is not None and recovery.epoch is not None:
                # Nothing replayed: the client reloads over HTTP and is live from TOP on.
                self.marks[stream] = self.joined[stream] = (recovery.epoch, recovery.top)
            return []
        epoch = recovery.epoch
        joined, mark = self.joined.get(stream), self.marks.get(stream)
        live_from = live_to = 0          # (live_from, live_to]: already written live
        if joined is not None and mark is not None and joined[0] == epoch == mark[0]:
            live_from, live_to = joined[1], mark[1]
        replay = []
        last = since
        for message in recovery.events:
            offset = message.positions[stream][1]
            if offset <= since or live_from < offset <= live_to:
                continue
            replay.append(Outgoing.of(message))
            last = max(last, offset)
        if not v2:
            return replay
        self.marks[stream] = (epoch, max(last, live_to))
        if joined is None or joined[0] != epoch:
            self.joined[stream] = (epoch, since)
        if replay:
            metrics.REPLAYED_EVENTS.inc(len(replay))
            self.conn.send(b"".join(out.v2_frame(stream) for out in replay), len(replay))
        return replay

    def _gap(self, stream: str) -> bool:
        """Whether the buffered live events start after an offset nobody sent."""
        mark = self.marks.get(stream)
        if mark is None:
            return False
        offsets = [out.positions[stream][1] for out in self.buffers.get(stream, ())
                   if stream in out.positions and out.positions[stream][0] == mark[0]]
        return bool(offsets) and min(offsets) > mark[1] + 1

    def _go_live(self, stream: str, since: int, recovery, replay: list, v2: bool, before_live) -> None:
        """The live events that waited, less those the replay held, and live from here on."""
        waiting = self.buffers.pop(stream, None)
        if v2:
            if waiting:                   # in offset order; those replayed skipped by their mark
                waiting.sort(key=lambda out: out.positions.get(stream, ("", 0))[1])
                self._write_v2(waiting)
            return
        ok = recovery is not None and recovery.ok
        epoch = recovery.epoch if ok else None
        last = max((out.positions[stream][1] for out in replay), default=since)
        live = [out for out in waiting or () if not _already(out, stream, epoch, last)]
        if stream not in self.marks and recovery is not None and recovery.epoch is not None:
            # where this connection now stands, should it drop before anything is written
            # (a replay still held by pacing moves it only when written)
            self.marks[stream] = (recovery.epoch, since if ok else recovery.top)
        if before_live is not None:
            before_live(recovery, replay)
        if replay or live:                # (a legacy stream: v2 returned above)
            self._deliver_legacy(replay + live)


def _already(out, stream: str, epoch, last: int) -> bool:
    """Whether a live event that waited during the replay was part of the replay."""
    if epoch is None:
        return False
    position = out.positions.get(stream) if out.positions else None
    return position is not None and position[0] == epoch and position[1] <= last


def merged_positions(outgoings) -> dict:
    """{stream: (epoch, offset)} of the last of `outgoings` in each stream."""
    merged: dict = {}
    for out in outgoings:
        if out.positions:
            merged.update(out.positions)
    return merged
