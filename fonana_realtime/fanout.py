"""Joins the hub (who holds what) and the broker (what reaches this worker).

Three jobs, each in one place:

- membership: `add`/`subscribe` register in the hub and, when a topic got its first
  local subscriber, make the broker listen. That listen is a *visible wait*: with Redis
  it returns once Redis acknowledged the SUBSCRIBE (at most broker SUBSCRIBE_WAIT), so
  "subscribed" means "delivered from now on". `remove`/`unsubscribe` unlisten topics
  that lost their last.
- delivery: the broker calls `on_message(message)` once per publication; each becomes
  one `Outgoing` (framed once for every recipient), queued, and written in batches by
  `deliver_batch` through `Connection.deliver`.
- replay then live (protocol v2, PROTOCOL.md 7): `recover` has the connection's streams
  (streams.Streams.replay_then_live, the routine legacy resume calls too) hold a
  stream's live events, reads the history after the client's offset for them, and
  counts the outcome. Dedupe is by offset (the connection's marks), so an event
  published during the replay is sent once, in its place.
"""
from __future__ import annotations

import time

import gevent

from . import metrics
from .history import Recovery
from .outgoing import Outgoing, SharedV2
from .presence import DisabledPresence
from .streams import merged_positions
from .wire import channel_topic, topic_stream, user_topic

# A batch of queued deliveries is written at the latest when it holds this many events
# or its first event has waited this long (see Fanout.on_message).
MAX_BATCH = 256
MAX_BATCH_SECONDS = 0.005


class Fanout:
    def __init__(self, hub, broker, recovery_max: int = 300, presence=None):
        self.hub = hub
        self.broker = broker
        # presence.py: told of every membership change (none noted without one)
        self.presence = presence if presence is not None else DisabledPresence(hub, broker)
        self.recovery_max = recovery_max        # WS_RECOVERY_MAX
        broker.on_message = self.on_message
        self._pending: list[Outgoing] = []      # waiting for this turn's write
        self._batch_started = 0.0

    # ---- membership ------------------------------------------------------------------

    def _joined(self, topic: str, first: bool):
        if first:
            self.broker.listen(topic)           # may wait (bounded) for the broker's ack
        else:
            self.broker.wait_listening(topic)   # only while the first one's ack is on its way

    def add(self, conn):
        """A new connection: registered under its user topic, heard from on return."""
        self._joined(user_topic(conn.user_id), self.hub.add(conn))
        self.presence.arrived(conn)

    def remove(self, conn):
        if conn in self.hub.connections:
            self.presence.left(conn, tuple(conn.channels))
        for topic in self.hub.remove(conn):
            self.broker.unlisten(topic)

    def subscribe(self, conn, key: str):
        if key in conn.channels:
            return
        self._joined(channel_topic(key), self.hub.subscribe(conn, key))
        self.presence.joined(conn, key)

    def unsubscribe(self, conn, key: str):
        if key in conn.channels:
            self.presence.parted(conn, key)
        if self.hub.unsubscribe(conn, key):
            self.broker.unlisten(channel_topic(key))
        conn.streams.left(key)      # last: no event of it is delivered to conn any more

    # ---- positions and recovery (protocol v2) ------------------------------------------

    def join_position(self, conn, stream: str) -> tuple:
        """(epoch, top) a v2 connection is told on joining `stream` (welcome, a
        subscribe without `since`); later events are the ones after it."""
        epoch, top = self.broker.position(stream)
        conn.streams.join_position(stream, epoch, top)
        return epoch, top

    def recover(self, conn, stream: str, since: tuple, reply, join=None) -> Recovery | None:
        """Replay then live for one stream of a v2 connection (all or nothing).

        `since` is the client's (epoch, offset). Live events of the stream wait from
        before `join()` (a subscribe) until the replay is out; `reply(recovery)` writes
        the reply frame (`subscribed` / `recovered`) before the replayed events
        (streams.Streams.replay_then_live). May wait on the broker (history read, listen)."""
        counted = []

        def read(epoch, offset):
            recovery = self.broker.history(stream, epoch, offset, self.recovery_max)
            if not counted:                   # the client's own read; a gap's rereads are not
                counted.append(recovery)
                metrics.RECOVERIES.labels("succeeded" if recovery.ok else recovery.reason).inc()
            return recovery

        return conn.streams.replay_then_live(stream, since, read, reply, join)

    # ---- delivery --------------------------------------------------------------------

    def on_message(self, message):
        """One publication reached this worker: frame it once, queue it.

        Events are written at the end of the current turn of the event loop, all that
        arrived in that turn together: a connection gets them in one write (one syscall)
        instead of one each, which is most of what a delivery costs. A turn ends as soon
        as the publishing greenlet yields; a greenlet that keeps publishing without
        yielding (back-to-back requests already buffered on a keep-alive connection, a
        list publish) writes the batch itself once it holds MAX_BATCH events or has held
        one for MAX_BATCH_SECONDS, so nothing waits on it for long.
        """
        pending = self._pending
        if not pending:
            self._batch_started = time.monotonic()
            gevent.spawn_raw(self._write_pending)
        # Not Outgoing.of: the live frames are not kept with a held message (measured:
        # ~300 B + the payload again per held event); a replay builds its own, once.
        pending.append(Outgoing(message))
        if len(pending) >= MAX_BATCH or time.monotonic() - self._batch_started >= MAX_BATCH_SECONDS:
            self._write_pending()

    def _write_pending(self):
        batch, self._pending = self._pending, []
        if not batch:              # already written by on_message
            return
        delivered, dropped = self.deliver_batch(batch)
        if delivered:
            metrics.step(metrics.EVENTS_DELIVERED, delivered)
            metrics.step(metrics.FRAMES_OUT, delivered)
        if dropped:
            metrics.step(metrics.DELIVERIES_DROPPED, dropped)
        now = time.time()
        for out in batch:
            if out.published_at is not None:
                metrics.observe(metrics.DELIVERY_SECONDS, max(0.0, now - out.published_at))

    def deliver_batch(self, batch: list[Outgoing]) -> tuple[int, int]:
        """Deliver Outgoings in order, one `Connection.deliver` per connection.

        When the batch has one audience (the usual burst on one post), the joined legacy
        frames are one shared bytes object for every recipient; otherwise each
        connection gets the events addressed to it, still in publish order and each
        once. Returns (delivered, dropped) counted in frames."""
        runs: list[tuple[list, list]] = []          # consecutive events with the same audience
        for out in batch:
            if runs and runs[-1][0] == out.topics and runs[-1][1][0].before == out.before:
                runs[-1][1].append(out)
            else:
                runs.append((out.topics, [out]))
        delivered = dropped = 0
        if len(runs) == 1:
            topics, outs = runs[0]
            joined = outs[0].legacy if len(outs) == 1 else b"".join(o.legacy for o in outs)
            positions = tuple(merged_positions(outs).items())
            shared_v2 = SharedV2(outs, topic_stream(topics[0])) if len(topics) == 1 else None
            count = len(outs)
            for conn in self.hub.targets(topics, outs[0].before):
                if conn.deliver(outs, joined, positions, shared_v2):
                    delivered += count
                else:
                    dropped += count
            return delivered, dropped
        per_conn: dict = {}
        for topics, outs in runs:
            chunk = b"".join(o.legacy for o in outs)
            for conn in self.hub.targets(topics, outs[0].before):
                parts = per_conn.get(conn)
                if parts is None:
                    per_conn[conn] = [outs, chunk]          # the run's own list, shared
                else:
                    parts[0] = parts[0] + outs              # a new list: never extend a shared one
                    parts[1] += chunk
        for conn, (outs, joined) in per_conn.items():
            if conn.deliver(outs, joined, None):
                delivered += len(outs)
            else:
                dropped += len(outs)
        return delivered, dropped
