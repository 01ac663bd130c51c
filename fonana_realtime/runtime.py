"""Everything one worker holds while it serves: settings, store, hub, broker,
command handlers, the heartbeat, and small caches. Made once per worker by
`create_app` (gunicorn loads the app after forking), kept in app.extensions.
"""
from __future__ import annotations

import logging
import time

import gevent

from . import heartbeat
from .auth import VerifiedTokens
from .broker import open_broker
from .commands import Commands
from .handshake_limits import HandshakeRate
from .hub import Hub
from .store import open_store

log = logging.getLogger("fonana_realtime.runtime")


class Runtime:
    def __init__(self, settings):
        self.settings = settings
        self.store = open_store(settings.database_url, settings.data_dir, settings.db_pool_size)
        self.hub = Hub()
        self.broker = open_broker(settings, self.hub)
        self.commands = Commands(self)
        self.handshakes = HandshakeRate(settings.handshakes_per_ip_per_sec,
                                        settings.handshakes_per_ip_burst)
        self.tokens = VerifiedTokens(settings.jwt_secrets, settings.jwt_leeway_seconds)
        self.draining = False
        self._user_cache: dict[str, float] = {}   # user id -> seen-until (monotonic)
        self._started = False

    def start(self):
        """Start the worker's background greenlets, once, from inside the worker."""
        if self._started:
            return
        self._started = True
        self.broker.start()
        gevent.spawn(heartbeat.run, self.hub, self.settings)

    def user_exists(self, user_id: str) -> bool:
        """Brief cache (WS_USER_CACHE_SECONDS): reconnect storms do not hammer `users`.
        Only positive answers are cached, so a new user can connect at once."""
        now = time.monotonic()
        until = self._user_cache.get(user_id)
        if until is not None and until > now:
            return True
        exists = self.store.user_exists(user_id)       # StoreUnavailable propagates
        if exists and self.settings.user_cache_seconds > 0:
            if len(self._user_cache) > 50_000:
                self._user_cache = {k: v for k, v in self._user_cache.items() if v > now}
            self._user_cache[user_id] = now + self.settings.user_cache_seconds
        return exists

