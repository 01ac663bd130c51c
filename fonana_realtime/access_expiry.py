"""Access that lapses while connected: one schedule per worker.

A post channel held through a subscription was granted until that subscription's
`validUntil` (`channels.access_until`); author, open post and purchase do not lapse.
Fonana's tokens live 30 days, so without a second look an open tab kept receiving a
locked post's events for weeks after the subscription ended. Each grant that has an end
is one entry of a heap; one greenlet sleeps until the earliest, asks the database again,
and either revokes the channel (`Commands.revoke`: unsubscribe, `error` `access_revoked`)
or, when the subscription was renewed, sleeps until the new end.

No timer per connection: a heap entry is a small tuple, and the one greenlet wakes only
when an entry is due (or once a minute to forget connections that are gone).
"""
from __future__ import annotations

import heapq
import itertools
import logging
import math
import time

from gevent.event import Event

from .store import StoreUnavailable

log = logging.getLogger("fonana_realtime.access_expiry")

# A re-check the database could not answer is tried again this much later; the access
# holds meanwhile (the database being down is no proof it ended).
RETRY_SECONDS = 10.0
# At least this often the schedule forgets the grants of closed connections.
PURGE_SECONDS = 60.0


class AccessExpiry:
    """`recheck(conn, key)` says until when access holds now (Unix seconds, math.inf for
    good, None if gone; may raise StoreUnavailable); `revoke(conn, key, channel)` ends
    it. Both run in this schedule's greenlet."""

    def __init__(self, recheck, revoke, clock=time.time):
        self._recheck = recheck
        self._revoke = revoke
        self._clock = clock
        self._heap: list = []          # (when, seq, conn, key), earliest first
        self._due: dict = {}           # (conn, key) -> (when, channel as sent): the live entry
        self._seq = itertools.count()  # ties never compare connections
        self._wake = Event()

    def __len__(self) -> int:
        return len(self._due)

    def watch(self, conn, key: str, until: float, channel) -> None:
        """`conn` holds `key` until `until`: check again then. Replaces an earlier entry
        of the same grant; `math.inf` (access that does not lapse) just forgets it."""
        if math.isinf(until):
            self._due.pop((conn, key), None)
            return
        self._due[(conn, key)] = (until, channel)
        heapq.heappush(self._heap, (until, next(self._seq), conn, key))
        if self._heap[0][0] == until:
            self._wake.set()           # a new earliest entry: the sleeper re-aims

    def forget(self, conn, key: str) -> None:
        """The connection gave the channel up (unsubscribe)."""
        self._due.pop((conn, key), None)

    def run(self) -> None:
        next_purge = self._clock() + PURGE_SECONDS
        while True:
            now = self._clock()
            if now >= next_purge:
                self._purge()
                next_purge = now + PURGE_SECONDS
            if self._heap and self._heap[0][0] <= now:
                when, _, conn, key = heapq.heappop(self._heap)
                entry = self._due.get((conn, key))
                if entry is not None and entry[0] == when:     # else replaced or forgotten
                    del self._due[(conn, key)]
                    try:
                        self._fire(conn, key, entry[1])
                    except Exception:      # one bad grant must not end the schedule
                        log.exception("access re-check failed", extra={"event": "access_expiry_error",
                                                                        "conn_id": conn.id})
                continue
            wake_at = min(next_purge, self._heap[0][0]) if self._heap else next_purge
            self._wake.clear()
            self._wake.wait(max(0.0, wake_at - now))

    def _fire(self, conn, key: str, channel) -> None:
        if conn.closed or conn.closing or key not in conn.channels:
            return
        try:
            until = self._recheck(conn, key)
        except StoreUnavailable:
            self.watch(conn, key, self._clock() + RETRY_SECONDS, channel)
            return
        if conn.closed or conn.closing or key not in conn.channels:
            return                         # it changed while we asked the database
        if until is None or until <= self._clock():
            self._revoke(conn, key, channel)
        else:
            self.watch(conn, key, until, channel)       # renewed

    def _purge(self) -> None:
        for grant in [g for g in self._due if g[0].closed]:
            del self._due[grant]
        if len(self._heap) > 2 * len(self._due) + 64:   # mostly stale: rebuild from the live ones
            self._heap = [(when, next(self._seq), conn, key) for (conn, key), (when, _) in self._due.items()]
            heapq.heapify(self._heap)
