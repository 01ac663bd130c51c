"""The greenlets that handle what clients send, so that no greenlet waits on an idle client.

Each connection's socket has a watcher (Connection.start_reading); when it turns
readable, one of the greenlets parked here takes that read and its frames, then parks
again. A read may wait (a `subscribe` queries the database), so when none is parked a new
one starts; past MAX_IDLE parked ones, a greenlet that is done ends instead of parking.

Why parked greenlets rather than one fresh greenlet per read: starting a greenlet maps
(and ending it unmaps) a fresh chunk for its Python frames, two system calls and a page
fault; 12-15 us a greenlet, measured, against ~1 us to switch into a parked one.
"""
from __future__ import annotations

import logging

from gevent import get_hub, getcurrent, spawn_raw

log = logging.getLogger("fonana_realtime.readers")

# Parked greenlets kept per worker, at most: a burst of reads that waited (database
# queries in a reconnect storm) leaves this many behind, ~7 KB each.
MAX_IDLE = 16


class Readers:
    __slots__ = ("hub", "idle")

    def __init__(self, hub):
        self.hub = hub                    # the hub the greenlets switch back to
        self.idle: list = []              # parked greenlets, waiting for a read

    def take(self, read):
        """Run `read()` in one of our greenlets. Called in the hub (a watcher's callback)."""
        if self.idle:
            self.idle.pop().switch(read)
        else:
            spawn_raw(self._serve, read)

    def _serve(self, read):
        idle, hub = self.idle, self.hub
        while True:
            try:
                read()
            except Exception:         # a bug costs that one read, not the greenlet
                log.exception("read failed", extra={"event": "internal_error"})
            if len(idle) >= MAX_IDLE:
                return
            idle.append(getcurrent())
            read = hub.switch()           # parked until `take` hands it the next read


_readers: Readers | None = None


def readers() -> Readers:
    """This thread's hub's Readers (one per worker process; a greenlet runs in its hub only)."""
    global _readers
    hub = get_hub()
    if _readers is None or _readers.hub is not hub:
        _readers = Readers(hub)
    return _readers
