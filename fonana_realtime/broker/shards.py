"""The Redis listener's connections, one per shard, and what it knows of each (redis.py).

A single Redis or Sentinel is one shard (`""`); a Cluster has one per master. Per shard:
its connection (a pubsub.PubSubConn), this worker's probe channel on it (readiness.py) and
whether that SUBSCRIBE is acknowledged; which connection hears the control channel
(classic pub/sub: every Cluster node hears it, one connection is enough); and which
shards are *missing*: named by the slot map but not heard now (their master died, no
replica took over yet, a slot moved away), with when to ask the slot map again.

Only the listener greenlet changes it; readiness and the probe read it.
"""
from __future__ import annotations

import time

from .backoff import backoff_delay
from .pubsub import PubSubConn


class Shards:
    def __init__(self):
        self.conns: dict[str, PubSubConn] = {}      # shard -> its connection
        self.probes: dict[str, bytes] = {}          # shard -> this worker's probe channel on it
        self.probes_heard: set[str] = set()         # shards whose probe SUBSCRIBE is acknowledged
        self.control_on: str | None = None          # the shard whose connection hears control
        self.missing: set[str] = set()              # shards not heard now: their topics wait
        self.rejoin_at = 0.0                        # when to ask the slot map for them again
        self._rejoins = 0                           # attempts since none were missing

    def __bool__(self) -> bool:
        return bool(self.conns)

    def heard(self, shard: str) -> bool:
        return shard in self.conns

    def pending(self) -> bool:
        """SUBSCRIBE acknowledgements still to come on any connection."""
        return any(pubsub.pending for pubsub in self.conns.values())

    # ---- connections come and go ----------------------------------------------------------

    def join(self, joined: dict, unreachable) -> bool:
        """New connections ({shard: PubSubConn}) and the shards that could not be reached;
        whether the missing ones changed (worth one log line, not one per attempt)."""
        before, self.missing = self.missing, set(unreachable)
        if self.missing:
            self._schedule()
        else:
            self._rejoins = 0
        self.conns.update(joined)
        return self.missing != before

    def add_probes(self, probes: dict):
        self.probes.update(probes)

    def probe_heard(self, channel: bytes) -> bool | None:
        """A SUBSCRIBE acknowledgement on `channel`: None if it is no probe channel, else
        whether every connection's probe is heard now."""
        for shard, probe in self.probes.items():
            if channel == probe:
                self.probes_heard.add(shard)
                return len(self.probes_heard) == len(self.probes)
        return None

    def heard_probes(self) -> dict:
        """{shard: probe channel} of the connections whose probe is heard."""
        return {shard: self.probes[shard] for shard in self.probes_heard if shard in self.probes}

    def control_needed(self) -> str | None:
        """The shard whose connection should take the control channel now, if none hears it."""
        if self.control_on is None and self.conns:
            self.control_on = next(iter(self.conns))
            return self.control_on
        return None

    def lose(self, shard: str) -> PubSubConn | None:
        """That shard's connection is gone: forgotten here (the caller closes it), the shard
        is missing until a rejoin."""
        pubsub = self.conns.pop(shard, None)
        if pubsub is None:
            return None
        self.probes.pop(shard, None)
        self.probes_heard.discard(shard)
        if self.control_on == shard:
            self.control_on = None
        self.wait_for(shard)
        return pubsub

    def wait_for(self, shard: str):
        """A shard that serves wanted topics has no connection: ask the slot map again soon."""
        if not self.missing:
            self._schedule()
        self.missing.add(shard)

    def rejoin_failed(self):
        self._schedule()

    def rejoin_in(self, now: float | None = None) -> float:
        """Seconds until a rejoin is due (<= 0: now); meaningful while shards are missing."""
        return self.rejoin_at - (time.monotonic() if now is None else now)

    def clear(self) -> list[PubSubConn]:
        """The whole link is gone: every connection, for the caller to close."""
        conns = list(self.conns.values())
        self.conns.clear()
        self.probes.clear()
        self.probes_heard.clear()
        self.missing.clear()
        self.control_on = None
        return conns

    def _schedule(self):
        self.rejoin_at = time.monotonic() + backoff_delay(self._rejoins)
        self._rejoins += 1
