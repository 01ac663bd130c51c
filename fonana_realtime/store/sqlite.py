"""The embedded default store: a local SQLite file with the Fonana tables.

Used when ``DATABASE_URL`` is unset, so the server can be tried without any
database server. On first open (the file is new, or has no tables yet) it
creates ``schema/sqlite.sql`` and seeds the demo rows of ``demo.py``; later
opens never re-seed, so what you changed stays changed.

Same table and quoted camelCase column names as PostgreSQL; enum columns are
TEXT with CHECKs, booleans INTEGER 0/1, timestamps TEXT
``YYYY-MM-DD HH:MM:SS.fff`` UTC (fixed width: string order is time order).

One connection (``check_same_thread=False``) guarded by a lock, autocommit,
WAL journal (readers never block the writer; other processes can share the
file), 5 s busy timeout. SQLite calls do not yield to gevent, but they are
local and sub-millisecond, which is fine for the single-worker default.
Every sqlite3 error becomes StoreUnavailable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
from datetime import datetime
from typing import Any, Iterator

from . import LASTING, Store, StoreUnavailable, queries
from .rows import (
    as_naive_utc,
    is_key,
    load_metadata,
    new_id,
    notification_row,
    sqlite_ts,
    utc_now,
)

log = logging.getLogger(__name__)

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "schema", "sqlite.sql")

_ROW_COLUMNS = '"id", "userId", "type", "title", "message", "isRead", "metadata", "createdAt"'
_TABLES = frozenset({"users", "posts", "subscriptions", "post_purchases", "notifications"})
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _to_row(r: tuple) -> dict:
    return notification_row(r[0], r[1], r[2], r[3], r[4], r[5], load_metadata(r[6]), r[7])


def _to_sqlite(value: Any) -> Any:
    """A Python value as SQLite stores it in the Fonana tables."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, datetime):
        return sqlite_ts(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    return value


_POST_ACCESS = queries.in_style(queries.POST_ACCESS, ":{}")
_NOTIFICATION_OF = queries.in_style(queries.NOTIFICATION_OF, ":{}")
_RECENT_NOTIFICATIONS = queries.in_style(queries.RECENT_NOTIFICATIONS, ":{}")
_POST_LIKES = queries.in_style(queries.POST_LIKES, ":{}")


class SqliteStore(Store):
    """The Store on a local SQLite file, created and seeded when new."""

    kind = "sqlite"

    def __init__(self, path: str, *, seed: bool = True) -> None:
        self.path = path
        # Under gevent monkey patching this is a gevent-aware lock.
        self._lock = threading.RLock()
        self._closed = False
        try:
            self._conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            created = self._create_schema_if_missing()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database: {exc}") from None
        if created and seed:
            from .demo import seed_demo

            seed_demo(self)
            log.info("created %s and seeded the demo rows", path)

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path!r}>"

    def _create_schema_if_missing(self) -> bool:
        """Create the tables when the file has none (new file). True if it did."""
        has_users = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'users'"
        ).fetchone()
        if has_users:
            return False
        with open(SCHEMA_PATH, encoding="utf-8") as fh:
            schema = fh.read()
        # IF NOT EXISTS everywhere: two processes racing to create the file both succeed.
        self._conn.executescript("BEGIN IMMEDIATE;\n" + schema + "\nCOMMIT;")
        return True

    # -- plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def _cursor(self, transaction: bool = False) -> Iterator[sqlite3.Cursor]:
        """The connection's cursor under the lock; sqlite3 errors become StoreUnavailable."""
        with self._lock:
            if self._closed:
                raise StoreUnavailable("store is closed")
            cur = self._conn.cursor()
            try:
                if transaction:
                    cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                except BaseException:
                    if transaction and self._conn.in_transaction:
                        self._conn.rollback()
                    raise
                if transaction:
                    cur.execute("COMMIT")
            except sqlite3.Error as exc:
                log.warning("SQLite error: %s", exc)
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.rollback()
                raise StoreUnavailable(f"database error: {exc}") from None
            finally:
                cur.close()

    def _fetchone(self, query: str, params: Any) -> Any:
        with self._cursor() as cur:
            return cur.execute(query, params).fetchone()

    # -- the interface ------------------------------------------------------

    def ping(self) -> None:
        self._fetchone("SELECT 1", ())

    def user_exists(self, user_id: str) -> bool:
        if not is_key(user_id):
            return False
        return self._fetchone('SELECT 1 FROM "users" WHERE "id" = ?', (user_id,)) is not None

    def existing_users(self, user_ids: list[str]) -> set[str]:
        # A local file: one query per id costs no round trip, and `= ?` is the statement a
        # single handshake always ran (`IN (?, ...)` cost ~1 % more per connect, issue 22).
        return {u for u in user_ids if self.user_exists(u)}

    def post_access_until(self, user_id: str, post_id: str) -> datetime | None:
        if not (is_key(user_id) and is_key(post_id)):
            return None
        row = self._fetchone(_POST_ACCESS, {"post": post_id, "user": user_id, "now": sqlite_ts(utc_now())})
        if row is None:
            return None
        return LASTING if row[0] else (as_naive_utc(row[1]) if row[1] is not None else None)

    def unread_notifications(self, user_id: str, limit: int = 20) -> tuple[list[dict], int]:
        if not is_key(user_id):
            return [], 0
        limit = max(0, int(limit))
        with self._cursor() as cur:
            # COUNT(*) OVER () is computed before LIMIT: the total comes with the page.
            found = cur.execute(
                f"""
                SELECT {_ROW_COLUMNS}, COUNT(*) OVER () AS "total"
                FROM "notifications"
                WHERE "userId" = ? AND NOT "isRead"
                ORDER BY "createdAt" DESC, "id" DESC
                LIMIT ?
                """,
                (user_id, limit),
            ).fetchall()
            if found:
                return [_to_row(r) for r in found], int(found[0][8])
            if limit == 0:
                total = cur.execute(
                    'SELECT COUNT(*) FROM "notifications" WHERE "userId" = ? AND NOT "isRead"', (user_id,)
                ).fetchone()[0]
                return [], int(total)
            return [], 0

    def unread_notifications_of(self, user_ids: list[str], limit: int = 20) -> dict[str, tuple[list[dict], int]]:
        # A local file: one query per user costs no round trip (~8 µs each, warm).
        return {u: self.unread_notifications(u, limit) for u in user_ids}

    def create_notification(
        self, user_id: str, type: str, title: str, message: str, metadata: Any = None
    ) -> dict | None:
        metadata_json = self._checked_notification(type, title, message, metadata)
        if not is_key(user_id):
            return None
        notification_id, created_at = new_id(), utc_now()
        with self._cursor() as cur:
            cur.execute(
                f"""
                INSERT INTO "notifications" ({_ROW_COLUMNS})
                SELECT ?, u."id", ?, ?, ?, 0, ?, ? FROM "users" u WHERE u."id" = ?
                """,
                (notification_id, type, title, message, metadata_json, sqlite_ts(created_at), user_id),
            )
            inserted = cur.rowcount
        if inserted != 1:
            return None
        return notification_row(
            notification_id, user_id, type, title, message, False, load_metadata(metadata_json), created_at
        )

    def notification_of(self, user_id: str, notification_id: str) -> dict | None:
        if not (is_key(user_id) and is_key(notification_id)):
            return None
        row = self._fetchone(_NOTIFICATION_OF, {"id": notification_id, "user": user_id})
        return None if row is None else _to_row(row)

    def recent_notifications(self, user_id: str, type: str, since: datetime) -> list[dict]:
        if not (is_key(user_id) and is_key(type)):
            return []
        with self._cursor() as cur:
            found = cur.execute(_RECENT_NOTIFICATIONS,
                                {"user": user_id, "type": type, "since": sqlite_ts(since)}).fetchall()
        return [_to_row(r) for r in found]

    def post_likes(self, post_id: str) -> int | None:
        if not is_key(post_id):
            return None
        row = self._fetchone(_POST_LIKES, {"post": post_id})
        return None if row is None else int(row[0])

    def read_notification(self, user_id: str, notification_id: str) -> tuple[dict, bool] | None:
        if not (is_key(user_id) and is_key(notification_id)):
            return None
        with self._cursor(transaction=True) as cur:
            cur.execute(
                'UPDATE "notifications" SET "isRead" = 1 WHERE "id" = ? AND "userId" = ? AND NOT "isRead"',
                (notification_id, user_id),
            )
            changed = cur.rowcount == 1
            row = cur.execute(
                f'SELECT {_ROW_COLUMNS} FROM "notifications" WHERE "id" = ? AND "userId" = ?',
                (notification_id, user_id),
            ).fetchone()
        return None if row is None else (_to_row(row), changed)

    def clear_notifications(self, user_id: str) -> int:
        if not is_key(user_id):
            return 0
        with self._cursor() as cur:
            cur.execute('UPDATE "notifications" SET "isRead" = 1 WHERE "userId" = ? AND NOT "isRead"', (user_id,))
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    # -- the demo seed (the server's first start on a new file) and tests ------

    def insert_rows(self, table: str, rows: list[dict]) -> int:
        """Insert plain rows into a Fonana table, skipping ids that exist; how many were inserted.

        The server calls it once, through ``seed_demo``, when it creates a new file;
        tests and ``seed-demo`` use it too. Never for notifications at run time. bools, datetimes (naive = UTC) and
        dict/list JSON are converted to the SQLite storage form.
        """
        if table not in _TABLES:
            raise ValueError(f"unknown table {table!r}")
        inserted = 0
        with self._cursor(transaction=True) as cur:
            for row in rows:
                if not all(_COLUMN.fullmatch(c) for c in row):
                    raise ValueError(f"bad column name in {sorted(row)!r}")
                columns = ", ".join(f'"{c}"' for c in row)
                marks = ", ".join("?" for _ in row)
                cur.execute(
                    f'INSERT OR IGNORE INTO "{table}" ({columns}) VALUES ({marks})',
                    [_to_sqlite(v) for v in row.values()],
                )
                inserted += cur.rowcount
        return inserted

