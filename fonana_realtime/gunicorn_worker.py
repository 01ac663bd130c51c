"""gunicorn's gevent worker, with a drain on SIGTERM instead of an abrupt stop.

The stock worker stops accepting as soon as SIGTERM arrives; ours first runs
`drain.drain` (ready 503, 1001 closes spread over WS_DRAIN_SECONDS) while still
serving HTTP, and only then lets the stock shutdown proceed.
"""
from __future__ import annotations

import gevent
from gunicorn.workers.ggevent import GeventWorker

from .drain import drain


class DrainingGeventWorker(GeventWorker):
    _draining = None

    def handle_exit(self, sig, frame):
        if self._draining is None:
            # Signal handlers may not block: the drain runs in its own greenlet.
            self._draining = gevent.spawn(self._drain_then_stop)

    def _drain_then_stop(self):
        try:
            runtime = self.wsgi.extensions.get("fonana_realtime")
            if runtime is not None:
                drain(runtime)
        finally:
            self.alive = False
