"""Automatic resume of legacy connections (PROTOCOL.md 8).

The Fonana client cannot send positions, but it resubscribes every channel after each
reconnect. So when a legacy connection ends for any reason other than the client
closing it (drain 1001, network loss, missed pings, 4009, 4001...), the server keeps,
per stream it held, the position of the last event written to it (its marks, kept by
`streams.Streams`, which pacing moves only on a real write) in `resume_marks` for WS_RESUME_SECONDS. A new
legacy connection of that user then gets the events it missed:

- the user stream right after the welcome frame, the stream of a channel right after
  its `subscribed` reply;
- in order, paced like live events (they go through `Connection.deliver`), before any
  live event of that stream: live ones wait from before the join until the replay is
  handed over, then follow it, each once (by offset): `Streams.replay_then_live`, the
  routine v2 recovery runs too;
- all or nothing, like a v2 recovery: nothing recoverable (another epoch, trimmed,
  expired, too many, history unreachable) → nothing replayed.

To know where a connection stood on a stream that sent it nothing yet, the stream's
position is taken when the connection joins it (before it is registered, so a mark never
claims an event that was not written; or, with Redis, the position the worker read right
before its first SUBSCRIBE of the stream: nothing at or before it can arrive on that
subscription). Only legacy connections with resume on pay that, and with Redis only
when the worker hears the stream without knowing its position (Broker.join_position).
"""
from __future__ import annotations

import logging
import time

from . import metrics
from .broker import NO_HISTORY

log = logging.getLogger("fonana_realtime.resume")

# The epoch of a mark for a stream that had no history at all when the connection joined
# it (in-process broker only, see Broker.join_position): every event it holds now came later.
FRESH = NO_HISTORY[0]


class Pending:
    """What a resuming connection still may replay, and what it did (for the log line)."""

    __slots__ = ("marks", "streams", "count")

    def __init__(self, marks: dict):
        self.marks = marks          # stream -> (epoch, offset, written_at) not yet used
        self.streams: list = []     # resumed so far
        self.count = 0              # events replayed so far


class Resume:
    def __init__(self, marks, broker, seconds: float, limit: int, clock=time.time, live=None):
        self.marks = marks          # resume_marks.MemoryMarks or RedisMarks
        self.broker = broker
        self.seconds = seconds
        self.limit = limit          # WS_RECOVERY_MAX: more missed events than this → nothing
        self.clock = clock
        # live_marks.LiveMarks with Redis marks: the live connections' marks, kept current
        # so that a killed worker's connections still depart (None in process)
        self.live = live

    # ---- a legacy connection arrives --------------------------------------------------

    def arrive(self, conn):
        """Before the connection is registered: where did this user's dropped connections
        leave off? Then join the user stream (see `before_join`)."""
        started_at = self.clock()
        try:
            marks = self.marks.recall(conn.user_id)
        except Exception as exc:        # Redis unreachable: no resume, the connection goes on
            log.warning("resume marks unavailable", extra={"event": "resume_unavailable",
                                                            "user_id": conn.user_id, "reason": type(exc).__name__})
            marks = {}
        conn.resuming(started_at, Pending(marks) if marks else None)
        return self.before_join(conn, conn.user_stream)

    def before_join(self, conn, stream: str):
        """Before `stream` is joined: hold its live events if it will be replayed, else ask
        the broker where it starts (Broker.join_position). Returns what to hand to
        `after_join`."""
        pending = conn.resume
        mark = pending.marks.get(stream) if pending is not None else None
        streams = conn.streams
        if mark is not None and self.clock() - mark[2] < self.seconds:
            streams.hold(stream)
            return None
        if streams.mark(stream) is not None:
            return None
        try:
            return self.broker.join_position(stream)
        except Exception:
            return None

    def after_join(self, conn, stream: str, joined=None):
        """Right after the welcome (user stream) or `subscribed` (`joined`: what
        `before_join` answered): where the connection started in the stream, or the missed
        events, then the live ones that waited, then live."""
        streams = conn.streams
        if joined is not None and streams.mark(stream) is None:     # nothing written to it since the join
            position = joined()
            if position is not None and position[0] is not None:
                streams.set_mark(stream, position)
        if not streams.holding(stream):
            self._live_join(conn, stream)
            return
        pending = conn.resume
        epoch, since, _ = pending.marks.pop(stream)

        def read(epoch, offset):
            try:
                if epoch == FRESH:             # nothing existed when it joined: all of it is missed
                    epoch = self.broker.position(stream)[0]
                recovery = self.broker.history(stream, epoch, offset, self.limit)
            except Exception:
                recovery = None
            if recovery is not None and recovery.ok:
                metrics.LEGACY_RESUMES.labels("replayed").inc()
            else:
                metrics.LEGACY_RESUMES.labels(recovery.reason if recovery is not None else "unavailable").inc()
            return recovery

        def before_live(recovery, replay):
            self._live_join(conn, stream)
            pending.streams.append(stream)
            pending.count += len(replay)
            if replay:
                metrics.LEGACY_REPLAYED_EVENTS.inc(len(replay))

        streams.replay_then_live(stream, (epoch, since), read, before_live=before_live)
        if not pending.marks:
            self._logged(conn)

    def _live_join(self, conn, stream: str):
        """Where the connection stands on a stream it just joined, in the live copy (its
        later moves come from Connection.on_marks)."""
        mark = conn.streams.mark(stream)
        if self.live is not None and mark is not None:
            self.live.moved(conn, ((stream, mark),))

    # ---- a legacy connection ends ----------------------------------------------------

    def depart(self, conn, by_client: bool):
        """The connection ended (called before it is unregistered)."""
        if conn.resume is not None and conn.resume.streams:
            self._logged(conn)
        held = [conn.user_stream] + list(conn.channels)
        if self.live is not None:
            self.live.left(conn, held, departed=True)   # its own marks follow, unless the client closed
        if by_client:
            return
        marks = conn.streams.held_marks()
        if not marks:
            return
        try:
            self.marks.remember(conn.user_id, marks, conn.started_at)
        except Exception as exc:
            log.warning("resume marks not kept", extra={"event": "resume_unavailable",
                                                         "user_id": conn.user_id, "reason": type(exc).__name__})

    @staticmethod
    def _logged(conn):
        pending = conn.resumed()
        log.info("resumed", extra={"event": "resumed", "user_id": conn.user_id, "conn_id": conn.id,
                                   "streams": pending.streams, "count": pending.count})
