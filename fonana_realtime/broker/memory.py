"""The in-process broker: one worker, so publishing is delivering; history in process
(history.py: a new epoch per start, bounded by size, age and meta age)."""
from __future__ import annotations

import logging
import time

import gevent

from .. import metrics
from ..history import MemoryHistory
from ..wire import Message, route_topics, topic_stream
from . import NO_HISTORY, Broker

log = logging.getLogger("fonana_realtime.broker")

SWEEP_EVERY = 5.0       # seconds between sweeps of expired history (O(expired) each)


class MemoryBroker(Broker):
    name = "memory"

    def __init__(self, history: MemoryHistory | None = None):
        super().__init__()
        self.memory = history if history is not None else MemoryHistory()
        self._sweeper = None

    def start(self):
        if self._sweeper is None:
            self._sweeper = gevent.spawn(self._sweep_forever)

    def stop(self):
        if self._sweeper is not None:
            self._sweeper.kill(block=False)

    def _sweep_forever(self):
        counted = {"stream": 0, "event": 0}         # evictions already in the metric
        while True:
            gevent.sleep(SWEEP_EVERY)
            try:
                history = self.memory
                history.sweep()
                streams, events = history.counts()
                metrics.HISTORY_BYTES.set(history.approx_bytes())
                metrics.HISTORY_EVENTS.set(events)
                metrics.HISTORY_STREAMS.set(streams)
                for what, total in (("stream", history.evicted_streams), ("event", history.evicted_events)):
                    if total > counted[what]:
                        metrics.HISTORY_EVICTED.labels(what).inc(total - counted[what])
                        counted[what] = total
            except Exception:       # the sweeper must outlive any bug
                log.exception("history sweep failed", extra={"event": "history_sweep_error"})

    def publish(self, route, payload: bytes) -> dict:
        topics = route_topics(route)
        message = Message(payload, topics, time.time())      # its id is made when a v2 frame needs it
        offsets = {}
        for topic in topics:
            stream = topic_stream(topic)
            offsets[stream] = self.memory.append(stream, message)[1]     # fills message.positions
        self.on_message(message)
        return offsets

    def publish_control(self, data: bytes) -> None:
        self.on_control(data)

    def position(self, stream: str):
        return self.memory.position(stream)

    def join_position(self, stream: str):
        position = self.memory.peek(stream)          # None: no history yet, it sees every publication
        position = NO_HISTORY if position is None else position
        return lambda: position

    def history(self, stream, epoch, since, limit):
        return self.memory.history(stream, epoch, since, limit)

    def listen(self, topic: str):
        # every topic of this process is already "heard"; a held stream's ghost stays
        self.memory.hold(topic_stream(topic))

    def unlisten(self, topic: str):
        self.memory.release(topic_stream(topic))
