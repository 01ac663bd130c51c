"""Joins the hub (who holds what) and the broker (what reaches this worker).

Two jobs, each in one place:

- membership: `add`/`subscribe` register in the hub and, when a topic got its first
  local subscriber, make the broker listen. That listen is a *visible wait*: with Redis
  it returns once Redis acknowledged the SUBSCRIBE (at most broker SUBSCRIBE_WAIT), so
  "subscribed" means "delivered from now on". `remove`/`unsubscribe` unlisten topics
  that lost their last.
- delivery: the broker calls `on_message(message)` once per publication; each becomes
  one `Outgoing` (framed once for every recipient), queued, and written in batches by
  `deliver_batch` through `Connection.deliver`.
"""
from __future__ import annotations

import time

import gevent

from . import metrics
from .connection import merged_positions
from .outgoing import Outgoing
from .wire import channel_topic, user_topic

# A batch of queued deliveries is written at the latest when it holds this many events
# or its first event has waited this long (see Fanout.on_message).
MAX_BATCH = 256
MAX_BATCH_SECONDS = 0.005


class Fanout:
    def __init__(self, hub, broker):
        self.hub = hub
        self.broker = broker
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

    def remove(self, conn):
        for topic in self.hub.remove(conn):
            self.broker.unlisten(topic)

    def subscribe(self, conn, key: str):
        if key in conn.channels:
            return
        self._joined(channel_topic(key), self.hub.subscribe(conn, key))

    def unsubscribe(self, conn, key: str):
        if self.hub.unsubscribe(conn, key):
            self.broker.unlisten(channel_topic(key))

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
        pending.append(Outgoing(message))
        if len(pending) >= MAX_BATCH or time.monotonic() - self._batch_started >= MAX_BATCH_SECONDS:
            self._write_pending()

    def _write_pending(self):
        batch, self._pending = self._pending, []
        if not batch:              # already written by on_message
            return
        delivered, dropped = self.deliver_batch(batch)
        if delivered:
            metrics.EVENTS_DELIVERED.inc(delivered)
            metrics.FRAMES_OUT.inc(delivered)
        if dropped:
            metrics.DELIVERIES_DROPPED.inc(dropped)
        now = time.time()
        for out in batch:
            if out.published_at is not None:
                metrics.DELIVERY_SECONDS.observe(max(0.0, now - out.published_at))

    def deliver_batch(self, batch: list[Outgoing]) -> tuple[int, int]:
        """Deliver Outgoings in order, one `Connection.deliver` per connection.

        When the batch has one audience (the usual burst on one post), the joined legacy
        frames are one shared bytes object for every recipient; otherwise each
        connection gets the events addressed to it, still in publish order and each
        once. Returns (delivered, dropped) counted in frames."""
        runs: list[tuple[list, list]] = []          # consecutive events with the same topics
        for out in batch:
            if runs and runs[-1][0] == out.topics:
                runs[-1][1].append(out)
            else:
                runs.append((out.topics, [out]))
        delivered = dropped = 0
        if len(runs) == 1:
            topics, outs = runs[0]
            joined = outs[0].legacy if len(outs) == 1 else b"".join(o.legacy for o in outs)
            positions = merged_positions(outs)
            count = len(outs)
            for conn in self.hub.targets(topics):
                if conn.deliver(outs, joined, positions):
                    delivered += count
                else:
                    dropped += count
            return delivered, dropped
        per_conn: dict = {}
        for topics, outs in runs:
            chunk = b"".join(o.legacy for o in outs)
            for conn in self.hub.targets(topics):
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
