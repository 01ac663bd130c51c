"""Everything one worker holds while it serves: settings, store, hub, broker, the
fanout joining them, command handlers, the heartbeat, and small caches. Made once per worker by
`create_app` (gunicorn loads the app after forking), kept in app.extensions.
"""
from __future__ import annotations

import logging
import os
import time

import gevent
from gevent.event import Event

from . import heartbeat
from .access_expiry import AccessExpiry
from .auth import VerifiedTokens
from .batcher import Batcher
from .broker import open_broker
from .commands import Commands
from .connection import Connection
from .control import Control
from .fanout import Fanout
from .handshake_limits import HandshakeRate
from .hub import Hub
from .live_marks import LiveMarks, live_key
from .notification_push import NotificationPush
from .pacing import Pacer
from .push_claims import open_claims
from .presence import open_presence
from .resume import Resume
from .resume_marks import MemoryMarks, RedisMarks
from .revocations import open_revocations
from .store import StoreUnavailable, open_store

log = logging.getLogger("fonana_realtime.runtime")

START_WAIT = 5.0    # a request arriving while the worker starts waits at most this for it


class Runtime:
    def __init__(self, settings):
        self.settings = settings
        self.store = open_store(settings.database_url, settings.data_dir, settings.db_pool_size)
        # the users asked for in one turn of the loop, in one query (batcher.py)
        self._users = Batcher(self._existing_users, missing=False, lost=StoreUnavailable,
                              immediate=not self.store.round_trips)
        self.hub = Hub()
        self.broker = open_broker(settings)
        # who holds what, over every worker and host (PROTOCOL.md 9)
        self.presence = open_presence(settings, self.hub, self.broker)
        self.fanout = Fanout(self.hub, self.broker, settings.recovery_max, self.presence)
        # legacy pacing (PROTOCOL.md 8): one scheduler for the worker, None when turned off
        gap = settings.legacy_type_gap_ms / 1000.0
        self.pacer = (Pacer(gap, on_written=Connection.written, confirm_after=2 * gap, solo_gap=1.5 * gap)
                      if gap > 0 else None)
        # automatic resume of legacy connections (PROTOCOL.md 8), None when turned off
        self.resume = _open_resume(settings, self.broker) if settings.resume_seconds > 0 else None
        # which row a push of the app names (PROTOCOL.md 4.1)
        self.pushes = NotificationPush(self.store, open_claims(settings, self.broker),
                                       settings.push_match_seconds)
        self.commands = Commands(self)
        # one schedule per worker for access that lapses while connected
        self.access_expiry = AccessExpiry(self.commands.access_until, self.commands.revoke)
        self.handshakes = HandshakeRate(settings.handshakes_per_ip_per_sec,
                                        settings.handshakes_per_ip_burst)
        self.verified_tokens = VerifiedTokens(settings.jwt_secrets, settings.jwt_leeway_seconds)
        # operators' calls (PROTOCOL.md 9): revoked tokens, and the messages acting on every worker
        self.revocations = open_revocations(settings, self.broker)
        self.control = Control(self.hub, self.commands, self.revocations, self.broker)
        self.draining = False
        self._user_cache: dict[str, float] = {}   # user id -> seen-until (monotonic)
        self._started = False
        self._start_done = Event()      # set once start() has run to its end

    def start(self):
        """Start the worker's background greenlets, once, from inside the worker."""
        if self._started:
            # Another greenlet is starting the worker (the revocations read waits on Redis):
            # a handshake judged before it ends would miss every revocation (seen in the
            # suite: a restarted worker let a revoked token in). Bounded.
            if not self._start_done.is_set():
                self._start_done.wait(START_WAIT)
            return
        self._started = True
        try:
            self._start()
        finally:
            self._start_done.set()

    def _start(self):
        # before any handshake is judged; with Redis read again each time the link comes
        # back (Control.on_link). Unreadable now (Redis down): the link's return reads it.
        self.revocations.reload()
        self.broker.start()
        self.presence.start()
        if self.pacer is not None:
            self.pacer.start()
        if self.resume is not None and self.resume.live is not None:
            self.resume.live.start()
        gevent.spawn(heartbeat.run, self.hub, self.settings)
        gevent.spawn(self.access_expiry.run)

    def user_exists(self, user_id: str, fresh: bool = False) -> bool:
        """Brief cache (WS_USER_CACHE_SECONDS): reconnect storms do not hammer `users`.
        Only positive answers are cached, so a new user can connect at once. `fresh`
        asks the database whatever the cache holds (the `auth` command: once per token)."""
        now = time.monotonic()
        until = None if fresh else self._user_cache.get(user_id)
        if until is not None and until > now:
            return True
        exists = self._users.get(user_id)       # StoreUnavailable propagates
        if not exists:
            self._user_cache.pop(user_id, None)
        elif self.settings.user_cache_seconds > 0:
            if len(self._user_cache) > 50_000:
                self._user_cache = {k: v for k, v in self._user_cache.items() if v > now}
            self._user_cache[user_id] = now + self.settings.user_cache_seconds
        return exists

    def _existing_users(self, user_ids: list[str]) -> dict[str, bool]:
        return dict.fromkeys(self.store.existing_users(user_ids), True)


def _open_resume(settings, broker) -> Resume:
    """Marks in Redis with REDIS_URL (every worker and host, and the next deploy, sees
    them), else in process."""
    client = broker.client
    live = None
    if settings.redis_url and client is not None:
        marks = RedisMarks(client, settings.redis_prefix, settings.resume_seconds,
                           max_marks=settings.resume_max_marks)
        live = LiveMarks(client, live_key(settings.redis_prefix, os.getpid()), settings.resume_seconds)
    else:
        marks = MemoryMarks(settings.resume_seconds, max_marks=settings.resume_max_marks)
    return Resume(marks, broker, settings.resume_seconds, settings.recovery_max, live=live)
