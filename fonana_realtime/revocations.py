"""Revoked tokens (PROTOCOL.md 9, `POST /api/revoke`): this worker's view, and where it is kept.

A revocation is `user -> before` (unix seconds): a token of that user issued before it
(`iat` < before, or no `iat`) is refused. It holds WS_REVOCATION_SECONDS after `before`
(as long as a token can live), then is forgotten.

The handshake asks `refuses(identity)`: a dict lookup in the worker's own view, never a
round trip. The view is kept current by the control messages (control.py) every worker
receives through the broker, and read whole from the store at start and again each time
the broker's link comes back (a message missed while the link was down is in the store).

Kept: in Redis with REDIS_URL (one hash, `<prefix>revoked`: field user, value `before`;
what Redis persists it keeps across its restarts, docs/DEPLOY.md), else in a SQLite file of
its own in DATA_DIR (one worker). Never in Fonana's PostgreSQL.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import redis

log = logging.getLogger("fonana_realtime.revocations")

SQLITE_FILENAME = "revocations.sqlite3"


class StoreError(Exception):
    """The revocation store did not answer."""


class Revocations:
    """The worker's view (`refuses`, `apply`, `lift`) over a store (`revoke`, `unrevoke`, `all`)."""

    def __init__(self, store, hold_seconds: float, clock=time.time):
        self.store = store
        self.hold_seconds = hold_seconds
        self.clock = clock
        self._before: dict[str, float] = {}     # user id -> tokens issued before this are refused
        self.loaded = False                     # the store has been read at least once

    def __len__(self) -> int:
        return len(self._before)

    def refuses(self, user_id: str, issued_at: float | None) -> bool:
        before = self._before.get(user_id)
        if before is None:
            return False
        if before + self.hold_seconds < self.clock():
            self._before.pop(user_id, None)     # outlived every token it was about
            return False
        return issued_at is None or issued_at < before

    def before(self, user_id: str) -> float | None:
        return self._before.get(user_id)

    # ---- the view, moved by control messages and reloads -------------------------------

    def apply(self, user_id: str, before: float) -> None:
        self._before[user_id] = max(before, self._before.get(user_id, before))

    def lift(self, user_id: str) -> None:
        self._before.pop(user_id, None)

    def reload(self) -> bool:
        """Read the whole store into the view; False (view kept) if it did not answer."""
        try:
            entries = self.store.all(self.clock() - self.hold_seconds)
        except StoreError as exc:
            log.warning("revocations: store unreadable, keeping this worker's view",
                        extra={"event": "revocations_unreadable", "error": str(exc)})
            return False
        self._before = entries
        self.loaded = True
        return True

    # ---- the store, written by the API call that revokes ------------------------------

    def revoke(self, user_id: str, before: float) -> None:
        self.store.revoke(user_id, before)      # StoreError propagates: nothing was promised
        self.apply(user_id, before)

    def unrevoke(self, user_id: str) -> None:
        self.store.unrevoke(user_id)
        self.lift(user_id)


class RedisRevocationStore:
    """One hash per deployment: `<prefix>revoked` {user: before}. Entries older than the
    hold are dropped when read (HDEL of the stale fields, in the same round trip)."""

    def __init__(self, client, prefix: str):
        self.client = client
        self.key = prefix + "revoked"

    def revoke(self, user_id: str, before: float) -> None:
        try:
            # keep the later `before` if one is there already (two calls racing)
            self.client.eval(_REVOKE_LUA, 1, self.key, user_id, repr(float(before)))
        except redis.RedisError as exc:
            raise StoreError(type(exc).__name__) from None

    def unrevoke(self, user_id: str) -> None:
        try:
            self.client.hdel(self.key, user_id)
        except redis.RedisError as exc:
            raise StoreError(type(exc).__name__) from None

    def all(self, oldest: float) -> dict[str, float]:
        try:
            raw = self.client.hgetall(self.key)
        except redis.RedisError as exc:
            raise StoreError(type(exc).__name__) from None
        out, stale = {}, []
        for field, value in raw.items():
            try:
                before = float(value)
            except ValueError:
                stale.append(field)
                continue
            if before < oldest:
                stale.append(field)
            else:
                out[field.decode("utf-8", "replace")] = before
        if stale:
            try:
                self.client.hdel(self.key, *stale)
            except redis.RedisError:
                pass                            # dropped next time
        return out


_REVOKE_LUA = """
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '')
if old == nil or old < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""


class SqliteRevocationStore:
    """Without Redis (one worker): a small SQLite file in DATA_DIR."""

    def __init__(self, data_dir: str):
        self.path = Path(data_dir) / SQLITE_FILENAME
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS revocations"
                       " (user_id TEXT PRIMARY KEY, before REAL NOT NULL)")

    def _connect(self):
        return sqlite3.connect(self.path, timeout=2.0)

    def _run(self, sql: str, params=()):
        try:
            with self._lock, self._connect() as db:
                return db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(type(exc).__name__) from None

    def revoke(self, user_id: str, before: float) -> None:
        self._run("INSERT INTO revocations (user_id, before) VALUES (?, ?) ON CONFLICT(user_id)"
                  " DO UPDATE SET before = max(before, excluded.before)", (user_id, float(before)))

    def unrevoke(self, user_id: str) -> None:
        self._run("DELETE FROM revocations WHERE user_id = ?", (user_id,))

    def all(self, oldest: float) -> dict[str, float]:
        self._run("DELETE FROM revocations WHERE before < ?", (oldest,))
        return {user: before for user, before in self._run("SELECT user_id, before FROM revocations")}


def open_revocations(settings, broker) -> Revocations:
    client = broker.client
    if settings.redis_url and client is not None:
        store = RedisRevocationStore(client, settings.redis_prefix)
    else:
        store = SqliteRevocationStore(settings.data_dir)
    return Revocations(store, settings.revocation_seconds)
