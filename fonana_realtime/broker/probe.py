"""The dead-link probe of the Redis listener (readiness.py says what its answers mean):
a nonce published through the command client to this worker's probe channel on every shard
whose probe SUBSCRIBE is acknowledged (shards.py), and whether the listener received it.
`/ready` makes one round trip; `run` (a greenlet of its own) one every PROBE_EVERY, and
hands the shards whose probe never came to `on_dead` (the listener rebuilds their
connections). The listener hands every message of a probe channel to `arrived`.
"""
from __future__ import annotations

import logging
import time
import uuid

import gevent
import redis
from gevent.event import Event

from .. import metrics
from .readiness import PROBE_EVERY, PROBE_WAIT, probe_verdict

log = logging.getLogger("fonana_realtime.broker")


class Probe:
    def __init__(self, link, shards, where: str):
        self.link = link
        self.shards = shards                    # the listener's Shards: read only here
        self.where = where
        self.stalled = False                    # a probe never came; until one round trip works
        self._nonces: dict[str, Event] = {}     # round trips in flight

    def arrived(self, data: bytes):
        """A message on a probe channel (the listener's greenlet)."""
        event = self._nonces.get(data.decode("ascii", "replace"))
        if event is not None:
            event.set()

    def round_trip(self, wait: float) -> tuple[bool, dict]:
        """(published, {shard: arrived within `wait`}); (False, {}) when nothing could be
        published (no probe heard, or the command client failed)."""
        probes = self.shards.heard_probes()
        if not probes:
            return False, {}
        nonces = {shard: uuid.uuid4().hex for shard in probes}
        for nonce in nonces.values():
            self._nonces[nonce] = Event()
        try:
            try:
                for shard, nonce in nonces.items():
                    self.link.publish_probe(probes[shard], nonce)
            except redis.RedisError:
                return False, {}
            deadline = time.monotonic() + wait
            return True, {shard: self._nonces[nonce].wait(max(0.0, deadline - time.monotonic()))
                          for shard, nonce in nonces.items()}
        finally:
            for nonce in nonces.values():
                self._nonces.pop(nonce, None)

    def run(self, live: Event, stopping, on_dead):
        """Every PROBE_EVERY while the link is live (caught up): a round trip; the shards
        whose nonce never came, on connections that were there before it, go to
        `on_dead`. `stopping()`: whether the broker stops."""
        while not stopping():
            gevent.sleep(PROBE_EVERY)
            if not self.shards or not live.is_set():
                continue                        # no link, or one still catching up
            probed = dict(self.shards.conns)    # a connection built meanwhile is not judged
            published, arrived = self.round_trip(PROBE_WAIT)
            dead = {shard for shard, came in arrived.items()
                    if probe_verdict(published, came) is False and self.shards.conns.get(shard) is probed.get(shard)}
            if dead and not stopping():
                self._stall(dead)
                on_dead(dead)
            elif published and arrived and all(arrived.values()) and self.stalled:
                self.stalled = False
                metrics.BROKER_STALLED.set(0)
                log.info("redis listener: link works again", extra={
                    "event": "broker_unstalled", "redis": self.where})

    def _stall(self, shards: set):
        if not self.stalled:
            self.stalled = True
            metrics.BROKER_STALLS.inc()
            metrics.BROKER_STALLED.set(1)
            log.warning("redis listener: link silently dead (a probe was published but never "
                        "arrived), rebuilding it", extra={
                            "event": "broker_stalled", "redis": self.where,
                            "probe_wait": PROBE_WAIT, "shards": sorted(shards)})
