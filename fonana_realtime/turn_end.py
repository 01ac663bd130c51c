"""Work put off to the end of the current turn of the worker's event loop, then done once
for everything the turn produced.

Why: in a reconnect storm one turn of the loop serves dozens of connects, and each bumped
half a dozen Prometheus values one by one (in multiprocess mode each step takes a lock
and writes an mmap'ed file: ~1-2 µs, ~3 % of a connect in the storm profile, issue 11).
Added up per turn they cost one write per value per turn (metrics.Tally).

Only a gevent worker defers (gunicorn_worker.DrainingGeventWorker calls `start` once its
hub runs). Anywhere else (the CLI, Flask's test client, gunicorn's master) `later`
answers False and the caller does the work at once.
"""
from __future__ import annotations

import gevent

_loop = None


def start():
    """From inside a gevent worker: from now on `later` defers to the worker's loop."""
    global _loop
    _loop = gevent.get_hub().loop


def later(callback) -> bool:
    """Run `callback` (which must not raise) when the loop next runs its callbacks, before
    it waits for I/O again; False, and nothing scheduled, outside a gevent worker."""
    if _loop is None:
        return False
    _loop.run_callback(callback)
    return True
