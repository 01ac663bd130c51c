"""Pacing of event frames to legacy connections (PROTOCOL.md 8).

The Fonana browser client (`lib/services/websocket.ts`) drops an event whose `type` it
emitted less than 100 ms ago (one timestamp per type, across all channels). So to a
connection without the `fonana.v2` subprotocol the server never writes two event frames
of one type less than the gap (WS_LEGACY_TYPE_GAP_MS, default 200 ms; 1.5 times it for
types without a conflation key, see below) apart:

- A frame that would come too soon waits. Frames of one *stream* (`post_P`, `user_U`, ...)
  are written in publish order, so a frame also waits behind an earlier waiting frame of
  its stream; frames of other streams pass it. Why not one queue for everything: a burst
  of 30 notifications takes 8.7 s to trickle out, and a global queue would hold every like
  and comment behind it for that long; the protocol orders events per stream only, and
  per stream is what keeps "the last position written" (automatic resume) a true prefix.
- While a frame waits, a newer one with the same conflation key replaces it
  (`Outgoing.conflate`): the old one is dropped and the new one takes the old one's
  stead at the end of the queue, i.e. in its own publish order. Post likes use ONE key
  per postId for `post_liked` and `post_unliked` alike: both carry the post's current
  `likesCount`, and the client shows whichever arrived last. With a key per type, a
  waiting `post_liked(5)` followed by `post_unliked(4)` and `post_liked(5)` would leave
  `[liked 5, unliked 4]` queued and the page on 4; with one key the queue holds only the
  latest state, whatever its type. The slot takes the newer frame's type, and it is that
  type's gap it waits for.
- Replies never come here (`Connection.send_json` writes them at once).
- Waiting frames count against the send backlog limits (bytes and frames): a client that
  cannot keep up is closed with 4009 exactly as if they were in its socket backlog.
- While a connection's socket backlog is not empty, nothing more is handed to it: the
  kernel would release the frames together when the client reads, and the client would
  drop them. They stay waiting (and conflating) until the backlog drained.
- The gap is kept by *send* time; the client drops by *arrival* time. A path that delays
  one frame more than the next (a jittering link, a busy page or machine) can still
  squeeze two under 100 ms, and a post's final count would be lost. So the latest state
  written for each conflation key (absolute state, safe to repeat) is written once more
  once its type has been quiet for `confirm_after` (twice the gap), unless a newer state
  of the key came meanwhile: that re-send reaches the client > 300 ms after anything of
  its type, which no measured squeeze came near (issue 17: 150 ms under a CPU hog). A
  type that never goes quiet (a hot post) gets no re-sends until it does; types without
  a conflation key (notifications: the app toasts each) are never re-sent, so their gap
  is wider instead (`solo_gap`, 1.5 times the gap: under a CPU hog the page got two
  notifications 93 ms apart that were written 200 ms apart).

Cost, paid only by connections that are being written to: a connection's `pace` slot is
None until an event frame is written to it; the small `Paced` state then remembers the
last write time per type, and the scheduler drops it again once the connection has been
quiet for PRUNE_SECONDS. One `Pacer` per worker: one heap of due times and one greenlet,
no timer or greenlet per connection.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import time

from . import close_codes, metrics

log = logging.getLogger("fonana_realtime.pacing")

# A connection's pacing state is dropped when nothing waits and its last write is older
# than this (the scheduler looks once per PRUNE_SECONDS). Connections that get an event at
# least once a second keep it (~0.4 KB); idle ones hold nothing.
PRUNE_SECONDS = 1.0


class Paced:
    """One legacy connection's pacing state (exists only while it is being written to)."""

    __slots__ = ("sent", "waiting", "confirm", "bytes", "due", "last")

    def __init__(self):
        self.sent: dict[str, float] = {}     # type -> when its last frame was handed to the socket
        self.waiting: dict = {}              # key -> (outgoing, offered at), in publish order
        self.confirm: dict = {}              # conflation key -> outgoing written last, to re-send
        self.bytes = 0                       # bytes of the waiting frames
        self.due = 0.0                       # when the scheduler looks again (0: not scheduled)
        self.last = 0.0                      # when the last frame was written

    def drop(self):
        """The connection is gone: its waiting frames go with it (as a socket backlog does)."""
        self.waiting.clear()
        self.confirm.clear()
        self.bytes = 0


def _noop(conn, outgoings):
    pass


class Pacer:
    """The worker's scheduler of held frames. `offer` is called by Connection.deliver for a
    legacy connection; `run_due` (from the one greenlet started by `start`) writes what has
    become due. Pure logic apart from `start`: tests drive `run_due` with their own clock."""

    def __init__(self, gap_seconds: float, clock=time.monotonic, on_written=_noop, confirm_after=None,
                 solo_gap=None):
        self.gap = gap_seconds
        # the gap of types without a conflation key (never re-sent: see the module's doc)
        self.solo = gap_seconds if solo_gap is None else solo_gap
        # how long a type stays quiet before its keys' latest states are re-sent (None: never)
        self.confirm_after = confirm_after
        self.clock = clock
        self.on_written = on_written        # (conn, outgoings) after a write the socket took
        self._heap: list = []               # (due, seq, conn)
        self._seq = itertools.count()
        self.active: set = set()            # connections holding a Paced state
        self._next_prune = 0.0
        # Counted here and handed to prometheus once per scheduler turn (run_due): an inc or
        # observe costs 1.7-4 us, once per flush it was ~0.2 s of CPU a second for 5,000
        # clients of a hot post.
        self.replaced = 0                   # frames replaced since the last turn
        self.held = 0                       # held frames written since the last turn
        self.waits = metrics.BatchedHistogram(metrics.HOLD_SECONDS)    # and how long each waited
        self._wake = None                   # gevent Event once started
        self._sleep_until = float("inf")

    # ---- the delivery side ------------------------------------------------------------

    def offer(self, conn, outgoings, joined: bytes | None = None) -> bool:
        """Hand events (in publish order) to one legacy connection: written now what may go
        now, held the rest. False if the connection is gone or overflowed. Like frames
        parked in a socket backlog, held frames count as delivered when accepted here."""
        if conn.closing or conn.closed:
            return False
        now = self.clock()
        pace = conn.pace
        if pace is None:
            pace = conn.paced(Paced())
            self.active.add(conn)
            if self._wake is not None and self._sleep_until == float("inf"):
                self._wake.set()             # the scheduler sleeps without a deadline: it prunes
        elif pace.waiting:
            return self._hold_and_flush(conn, pace, outgoings, now)
        # Nothing waits: everything goes now unless a type repeats within the gap (or the
        # socket still holds earlier frames, see the module's doc).
        sent, gap, solo = pace.sent, self.gap, self.solo
        if conn.backlog is not None or len(outgoings) > 1 and len({o.type for o in outgoings}) != len(outgoings):
            return self._hold_and_flush(conn, pace, outgoings, now)
        for out in outgoings:
            last = sent.get(out.type)
            if last is not None and now < last + (gap if out.conflate else solo):
                return self._hold_and_flush(conn, pace, outgoings, now)
        for out in outgoings:
            sent[out.type] = now
        pace.last = now
        if joined is None:
            joined = outgoings[0].legacy if len(outgoings) == 1 else b"".join(o.legacy for o in outgoings)
        if conn.send(joined, len(outgoings)):
            self.on_written(conn, outgoings)
            if self.confirm_after is not None:
                self._to_confirm(conn, pace, outgoings, now)
            return True
        return False

    def _to_confirm(self, conn, pace: Paced, written, now: float):
        """The conflated frames just written are the latest state of their keys: re-sent
        once their type has been quiet for confirm_after (see the module's doc)."""
        confirm = pace.confirm
        for out in written:
            key = out.conflate
            if key:
                confirm[key] = out
                self._schedule(pace, conn, now + self.confirm_after)

    def _hold_and_flush(self, conn, pace: Paced, outgoings, now: float) -> bool:
        waiting = pace.waiting
        replaced = 0
        for out in outgoings:
            key = out.conflate or out        # no conflation key: the frame is its own key
            old = waiting.pop(key, None)
            if old is not None:
                pace.bytes -= len(old[0].legacy)
                replaced += 1
            waiting[key] = (out, now)
            pace.bytes += len(out.legacy)
            if pace.confirm:
                pace.confirm.pop(key, None)  # a newer state of the key is on its way
        if replaced:
            self.replaced += replaced        # into the metric once per scheduler turn (run_due)
        if 0 < pace.due and now < pace.due:
            # Nothing that waited is due yet (the scheduler comes at pace.due); if none of
            # the new frames' types is free either, a flush would only rescan the queue.
            # The hot path of a hot post: a like replacing the waiting like (measured:
            # 1,000 clients at 200 likes/s, server CPU 0.79 s/s with the rescan).
            sent, gap, solo = pace.sent, self.gap, self.solo
            soonest = pace.due
            for out in outgoings:
                last = sent.get(out.type)
                if last is None:
                    break
                turn = last + (gap if out.conflate else solo)
                if now >= turn:
                    break
                if turn < soonest:
                    soonest = turn
            else:
                if soonest < pace.due:       # pace.due was a re-send's, later than this type's turn
                    self._schedule(pace, conn, soonest)
                return not self._over_limits(conn, pace)
        if self._flush(conn, pace, now) < 0:
            return False
        return not (pace.waiting and self._over_limits(conn, pace))

    def _over_limits(self, conn, pace: Paced) -> bool:
        """Waiting frames count against the send backlog: over a limit → 4009."""
        limits = conn.settings
        if (conn.backlog_bytes + pace.bytes > limits.send_backlog_bytes
                or conn.backlog_frames + len(pace.waiting) > limits.send_backlog_frames):
            pace.drop()
            conn.overflow()
            return True
        return False

    def _flush(self, conn, pace: Paced, now: float) -> int:
        """Write every waiting frame that may go now, in one write; schedule the rest.
        Returns the frames written, -1 if the connection is gone."""
        if conn.closing or conn.closed:
            pace.drop()
            return -1
        if conn.backlog is not None:         # the socket has not taken the last write yet
            self._schedule(pace, conn, now + self.gap)
            return 0
        sent, gap, solo = pace.sent, self.gap, self.solo
        blocked: set = set()                 # streams with an earlier frame still waiting
        due = float("inf")
        keys, outs, held, waits = [], [], 0, self.waits
        for key, (out, offered_at) in pace.waiting.items():
            streams = out.streams
            if blocked and not blocked.isdisjoint(streams):
                blocked.update(streams)
                continue
            last = sent.get(out.type)
            if last is not None:
                turn = last + (gap if out.conflate else solo)
                if now < turn:
                    blocked.update(streams)
                    if turn < due:
                        due = turn
                    continue
            sent[out.type] = now
            keys.append(key)
            outs.append(out)
            if offered_at < now:
                held += 1
                waits.add(now - offered_at)
        if pace.confirm:
            due = self._confirms(pace, now, keys, outs, due)
        if outs:
            waiting = pace.waiting
            resent = 0
            for key in keys:
                entry = waiting.pop(key, None)
                if entry is None:
                    resent += 1              # a re-send: not an event written anew
                else:
                    pace.bytes -= len(entry[0].legacy)
            pace.last = now
            if held:
                self.held += held
            if not conn.send(b"".join(o.legacy for o in outs), len(outs)):
                pace.drop()
                return -1
            fresh = outs[:len(outs) - resent] if resent else outs
            if fresh:
                self.on_written(conn, fresh)
                if self.confirm_after is not None:
                    self._to_confirm(conn, pace, fresh, now)
        if pace.waiting or pace.confirm:
            self._schedule(pace, conn, due if due != float("inf") else now + gap)
        return len(outs)

    def _confirms(self, pace: Paced, now: float, keys: list, outs: list, due: float) -> float:
        """Add to this write the re-sends whose type has been quiet long enough (one per
        type per write, so the gap holds between them too); returns the next due time."""
        sent, after = pace.sent, self.confirm_after
        for key, out in list(pace.confirm.items()):
            last = sent.get(out.type)
            if last is not None and now < last + after:
                if last + after < due:
                    due = last + after
                continue
            del pace.confirm[key]
            sent[out.type] = now
            keys.append(key)
            outs.append(out)
        return due

    # ---- the scheduler ---------------------------------------------------------------

    def _schedule(self, pace: Paced, conn, due: float):
        if pace.due and pace.due <= due:
            return                           # already looked at earlier than that
        pace.due = due
        heapq.heappush(self._heap, (due, next(self._seq), conn))
        if due < self._sleep_until and self._wake is not None:
            self._wake.set()

    def run_due(self, now: float | None = None):
        """Write what has become due by `now`; drop the state of quiet connections."""
        now = self.clock() if now is None else now
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, conn = heapq.heappop(heap)
            pace = conn.pace
            if pace is None or pace.due != due:
                continue                     # superseded by an earlier schedule, or released
            pace.due = 0.0
            try:
                self._flush(conn, pace, now)
            except Exception:
                self._failed(conn, pace)
        self._count()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_SECONDS
            self.prune(now)

    def _failed(self, conn, pace: Paced):
        """A bug while writing one connection's held frames. Its frames would wait for a
        schedule that never comes: the tab would go silent with no error anywhere (issue
        17). Close it 1011 instead: the client reconnects and resumes what it missed."""
        log.exception("pacing failed for a connection", extra={"event": "pacing_error", "conn_id": conn.id,
                                                                "user_id": conn.user_id})
        pace.drop()
        try:
            conn.close(close_codes.INTERNAL_ERROR)
        except Exception:
            conn.abort()

    def _count(self):
        if self.replaced:
            metrics.FRAMES_REPLACED.inc(self.replaced)
            self.replaced = 0
        if self.held:
            metrics.FRAMES_HELD.inc(self.held)
            self.held = 0
            self.waits.flush()

    def prune(self, now: float):
        quiet = [c for c in self.active
                 if c.closed or (not c.pace.waiting and not c.pace.confirm and now - c.pace.last >= PRUNE_SECONDS)]
        for conn in quiet:
            conn.unpaced()
            self.active.discard(conn)

    def next_due(self) -> float | None:
        """When `run_due` has work next (a due frame, or quiet states to drop)."""
        if self._heap:
            return min(self._heap[0][0], self._next_prune) if self.active else self._heap[0][0]
        return self._next_prune if self.active else None

    def start(self):
        """The one greenlet of this worker that writes held frames when they are due."""
        import gevent
        from gevent.event import Event
        self._wake = Event()
        gevent.spawn(self._run)

    def _run(self):
        while True:
            due = self.next_due()
            self._sleep_until = float("inf") if due is None else due
            timeout = None if due is None else max(0.0, due - self.clock())
            self._wake.clear()
            if timeout is None or timeout > 0:
                self._wake.wait(timeout)
            try:
                self.run_due()
            except Exception:     # the scheduler must outlive any one bad connection
                log.exception("pacing scheduler failed", extra={"event": "pacing_error"})
