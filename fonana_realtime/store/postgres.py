"""The production store: Fonana's PostgreSQL through psycopg2.

* gevent-cooperative: under gunicorn's gevent workers psycogreen's wait
  callback makes every libpq wait yield to the hub (see ``PostgresStore.__init__``).
* A bounded pool: at most ``pool_size`` connections per process; a caller
  that finds them all busy waits up to ``pool_timeout`` seconds, then gets
  StoreUnavailable. Connections are autocommit: every method is one statement.
* Self-healing: a connection that broke is discarded together with every idle
  one (after a database restart they are all dead); the next call reconnects.
  Read-only calls that hit a dead *pooled* connection retry once on a fresh one.
* Nothing waits forever: libpq ``connect_timeout`` (3 s) and TCP keepalives;
  under gevent, where libpq ignores ``connect_timeout`` for its non-blocking
  connect, a gevent.Timeout bounds the connect and every statement.
* It never migrates the database: no DDL here. Tests and dev databases load
  ``schema/postgres.sql`` themselves.

Every query is parameterised, with quoted camelCase identifiers as Prisma made them.
Driver errors never escape: they become StoreUnavailable (messages never hold the DSN).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from datetime import datetime
from typing import Any, Callable, Iterator

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from . import LASTING, Store, StoreUnavailable, queries
from .rows import (
    is_key,
    new_id,
    notification_row,
    utc_now,
)

log = logging.getLogger(__name__)

# libpq options added when the URL does not set them itself.
_DSN_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "application_name": "fonana-realtime",
}

_ROW_COLUMNS = '"id", "userId", "type", "title", "message", "isRead", "metadata", "createdAt"'
_TABLES = frozenset({"users", "posts", "subscriptions", "post_purchases", "notifications"})
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _gevent_patched() -> bool:
    """Whether gevent has monkey-patched ``socket`` in this process (i.e. we run under a gevent worker)."""
    try:
        import gevent.monkey
    except ImportError:  # pragma: no cover - gevent is a pinned dependency
        return False
    return bool(gevent.monkey.is_module_patched("socket"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # already broken; nothing to do
        pass


_POST_ACCESS = queries.in_style(queries.POST_ACCESS, "%({})s")
_NOTIFICATION_OF = queries.in_style(queries.NOTIFICATION_OF, "%({})s")
_RECENT_NOTIFICATIONS = queries.in_style(queries.RECENT_NOTIFICATIONS, "%({})s")
_POST_LIKES = queries.in_style(queries.POST_LIKES, "%({})s")


# The newest unread of each user of an array, and each one's total: per user the same
# query as `unread_notifications` (the index on ("userId", "isRead") serves each), in one
# round trip. COUNT(*) OVER () inside the lateral is computed before its LIMIT.
_UNREAD_OF = f"""
SELECT u."id", n.*
FROM unnest(%s::text[]) AS u("id")
CROSS JOIN LATERAL (
  SELECT {_ROW_COLUMNS}, COUNT(*) OVER () AS "total"
  FROM "notifications"
  WHERE "userId" = u."id" AND NOT "isRead"
  ORDER BY "createdAt" DESC, "id" DESC
  LIMIT %s
) n
ORDER BY u."id", n."createdAt" DESC, n."id" DESC
"""


class _Pool:
    """At most ``size`` connections; idle ones are reused last-in first-out.

    ``threading`` primitives are looked up at construction time, so under gevent
    monkey patching they are the gevent-aware ones and a waiting caller only
    parks its own greenlet.
    """

    def __init__(self, connect: Callable[[], Any], size: int, wait_timeout: float) -> None:
        if size < 1:
            raise ValueError("pool_size must be at least 1")
        self.size = size
        self._connect = connect
        self._wait_timeout = wait_timeout
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._closed = False

    def acquire(self) -> tuple[Any, bool]:
        """(connection, reused): an idle connection or a new one. StoreUnavailable on timeout."""
        if self._closed:
            raise StoreUnavailable("store is closed")
        if not self._slots.acquire(timeout=self._wait_timeout):
            raise StoreUnavailable(
                f"no database connection became free within {self._wait_timeout:g}s (pool of {self.size})"
            )
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is not None:
                return conn, True
            return self._connect(), False
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: Any, discard: bool) -> None:
        try:
            if discard or conn.closed:
                _close_quietly(conn)
                return
            with self._lock:
                if not self._closed:
                    self._idle.append(conn)
                    return
            _close_quietly(conn)
        finally:
            self._slots.release()

    def flush_idle(self) -> None:
        """Close every idle connection (after one broke, the others are probably dead too)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.flush_idle()


class PostgresStore(Store):
    """The Store on a PostgreSQL database that already has the Fonana tables."""

    kind = "postgresql"
    round_trips = True

    def __init__(
        self,
        database_url: str,
        pool_size: int = 10,
        *,
        connect_timeout: float = 3.0,
        pool_timeout: float = 5.0,
        statement_timeout: float = 10.0,
    ) -> None:
        try:
            params = psycopg2.extensions.parse_dsn(database_url)
        except psycopg2.Error:
            raise ValueError("DATABASE_URL is not a valid PostgreSQL connection string") from None
        if "connect_timeout" in params:  # the URL's own value wins
            try:
                connect_timeout = float(params["connect_timeout"]) or connect_timeout
            except ValueError:
                raise ValueError("DATABASE_URL has a non-numeric connect_timeout") from None
        else:
            params["connect_timeout"] = str(max(2, round(connect_timeout)))  # whole seconds, libpq minimum 2
        for key, value in _DSN_DEFAULTS.items():
            params.setdefault(key, value)
        self._dsn = psycopg2.extensions.make_dsn(**params)  # holds the password: never log it
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout

        # Under gunicorn's gevent workers a plain psycopg2 call blocks the whole
        # worker -- every WebSocket it serves -- until the database answers.
        # psycogreen's wait callback turns libpq's waits into gevent waits so
        # only the calling greenlet parks. It is process-global and needs a
        # running gevent hub, so install it only when gevent has patched the
        # socket module (the gevent worker); plain use (tests, scripts) keeps
        # ordinary blocking psycopg2. Create the store after monkey patching.
        self._green = _gevent_patched()
        if self._green:
            from psycogreen.gevent import patch_psycopg

            patch_psycopg()

        self._pool = _Pool(self._connect, pool_size, pool_timeout)

    def __repr__(self) -> str:  # never show the DSN
        return f"<PostgresStore pool_size={self._pool.size} green={self._green}>"

    # -- plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def _deadline(self, seconds: float, what: str) -> Iterator[None]:
        """Under gevent, bound the block to ``seconds`` (StoreUnavailable after). Without gevent: libpq's own timeouts."""
        if not self._green:
            yield
            return
        import gevent

        timer = gevent.Timeout(seconds)
        timer.start()
        try:
            yield
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise StoreUnavailable(f"database {what} timed out after {seconds:g}s") from None
        finally:
            timer.cancel()

    def _connect(self) -> Any:
        try:
            # libpq ignores connect_timeout for the non-blocking connect used under gevent.
            with self._deadline(self._connect_timeout + 0.5, "connect"):
                conn = psycopg2.connect(self._dsn)
        except psycopg2.Error as exc:
            log.warning("PostgreSQL connect failed: %s", _first_line(exc))
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {_first_line(exc)}") from None
        conn.autocommit = True
        return conn

    def _run(self, work: Callable[[Any], Any], *, read_only: bool) -> Any:
        """Run ``work(cursor)`` on a pooled connection, turning every driver error into StoreUnavailable.

        A read-only call that fails because a *reused* connection was dead
        (e.g. the database restarted since) is retried once on a new connection;
        a write is not retried, since it may already have been applied.
        """
        attempts = 2 if read_only else 1
        for attempt in range(attempts):
            conn, reused = self._pool.acquire()
            broken = True
            try:
                with self._deadline(self._statement_timeout, "statement"):
                    with conn.cursor() as cur:
                        result = work(cur)
                broken = False
                return result
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                self._pool.flush_idle()
                if reused and attempt + 1 < attempts:
                    log.info("discarded a dead pooled PostgreSQL connection; retrying: %s", _first_line(exc))
                    continue
                log.warning("PostgreSQL connection failed: %s", _first_line(exc))
                raise StoreUnavailable(f"database connection failed: {_first_line(exc)}") from None
            except psycopg2.Error as exc:
                # Not a connection problem (missing table, bad data...): the autocommit
                # connection is still usable, but the caller cannot use the database.
                broken = bool(conn.closed)
                log.error("PostgreSQL error %s: %s", type(exc).__name__, _first_line(exc))
                raise StoreUnavailable(f"database error: {type(exc).__name__}") from None
            except StoreUnavailable:  # the statement deadline fired: connection state unknown
                self._pool.flush_idle()
                raise
            except Exception:
                broken = bool(conn.closed)
                raise
            finally:
                self._pool.release(conn, discard=broken)
        raise AssertionError("unreachable")  # pragma: no cover

    def _fetchone(self, query: str, params: Any, *, read_only: bool = True) -> Any:
        def work(cur: Any) -> Any:
            cur.execute(query, params)
            return cur.fetchone()

        return self._run(work, read_only=read_only)

    # -- the interface ------------------------------------------------------

    def ping(self) -> None:
        self._fetchone("SELECT 1", None)

    def user_exists(self, user_id: str) -> bool:
        return user_id in self.existing_users([user_id])     # one query, one shape for both

    def existing_users(self, user_ids: list[str]) -> set[str]:
        ids = [u for u in user_ids if is_key(u)]
        if not ids:
            return set()

        def work(cur: Any) -> set[str]:
            cur.execute('SELECT "id" FROM "users" WHERE "id" = ANY(%s)', (ids,))
            return {row[0] for row in cur.fetchall()}

        return self._run(work, read_only=True)

    def post_access_until(self, user_id: str, post_id: str) -> datetime | None:
        if not (is_key(user_id) and is_key(post_id)):
            return None
        row = self._fetchone(_POST_ACCESS, {"post": post_id, "user": user_id, "now": utc_now()})
        if row is None:
            return None
        return LASTING if row[0] else row[1]

    def unread_notifications(self, user_id: str, limit: int = 20) -> tuple[list[dict], int]:
        return self.unread_notifications_of([user_id], limit)[user_id]

    def unread_notifications_of(self, user_ids: list[str], limit: int = 20) -> dict[str, tuple[list[dict], int]]:
        answer: dict[str, tuple[list[dict], int]] = {u: ([], 0) for u in user_ids}
        ids = [u for u in answer if is_key(u)]
        if not ids:
            return answer
        limit = max(0, int(limit))

        def work(cur: Any) -> None:
            if limit == 0:
                cur.execute('SELECT "userId", COUNT(*) FROM "notifications" WHERE "userId" = ANY(%s) AND NOT "isRead" '
                            'GROUP BY "userId"', (ids,))
                for user_id, total in cur.fetchall():
                    answer[user_id] = ([], int(total))
                return
            cur.execute(_UNREAD_OF, (ids, limit))
            for found in cur.fetchall():
                rows, _ = answer[found[0]]
                rows.append(notification_row(*found[1:9]))
                answer[found[0]] = (rows, int(found[9]))

        self._run(work, read_only=True)
        return answer

    def create_notification(
        self, user_id: str, type: str, title: str, message: str, metadata: Any = None
    ) -> dict | None:
        metadata_json = self._checked_notification(type, title, message, metadata)
        if not is_key(user_id):
            return None
        row = self._fetchone(
            f"""
            INSERT INTO "notifications" ({_ROW_COLUMNS})
            SELECT %s, u."id", %s::"NotificationType", %s, %s, false, %s::jsonb, %s
            FROM "users" u WHERE u."id" = %s
            RETURNING {_ROW_COLUMNS}
            """,
            (new_id(), type, title, message, metadata_json, utc_now(), user_id),
            read_only=False,
        )
        return None if row is None else notification_row(*row)

    def notification_of(self, user_id: str, notification_id: str) -> dict | None:
        if not (is_key(user_id) and is_key(notification_id)):
            return None
        row = self._fetchone(_NOTIFICATION_OF, {"id": notification_id, "user": user_id})
        return None if row is None else notification_row(*row)

    def recent_notifications(self, user_id: str, type: str, since: datetime) -> list[dict]:
        if not (is_key(user_id) and is_key(type)):
            return []

        def work(cur: Any) -> list[dict]:
            cur.execute(_RECENT_NOTIFICATIONS, {"user": user_id, "type": type, "since": since})
            return [notification_row(*r) for r in cur.fetchall()]

        return self._run(work, read_only=True)

    def post_likes(self, post_id: str) -> int | None:
        if not is_key(post_id):
            return None
        row = self._fetchone(_POST_LIKES, {"post": post_id})
        return None if row is None else int(row[0])

    def read_notification(self, user_id: str, notification_id: str) -> tuple[dict, bool] | None:
        if not (is_key(user_id) and is_key(notification_id)):
            return None
        row = self._fetchone(
            f"""
            UPDATE "notifications" SET "isRead" = true
            WHERE "id" = %s AND "userId" = %s AND NOT "isRead"
            RETURNING {_ROW_COLUMNS}
            """,
            (notification_id, user_id),
            read_only=False,
        )
        if row is not None:
            return notification_row(*row), True
        row = self._fetchone(f'SELECT {_ROW_COLUMNS} FROM "notifications" WHERE "id" = %s AND "userId" = %s',
                             (notification_id, user_id))
        return None if row is None else (notification_row(*row), False)

    def clear_notifications(self, user_id: str) -> int:
        if not is_key(user_id):
            return 0

        def work(cur: Any) -> int:
            cur.execute(
                'UPDATE "notifications" SET "isRead" = true WHERE "userId" = %s AND NOT "isRead"', (user_id,)
            )
            return cur.rowcount

        return self._run(work, read_only=False)

    def close(self) -> None:
        self._pool.close()

    # -- dev/test helper (not used by the server) ---------------------------

    def insert_rows(self, table: str, rows: list[dict]) -> int:
        """Insert plain rows into a Fonana table, skipping ids that exist; how many were inserted.

        For the demo seed and tests only: the server never writes anything but
        notifications. dict/list values are stored as JSON.
        """
        if table not in _TABLES:
            raise ValueError(f"unknown table {table!r}")

        def work(cur: Any) -> int:
            inserted = 0
            for row in rows:
                if not all(_COLUMN.fullmatch(c) for c in row):
                    raise ValueError(f"bad column name in {sorted(row)!r}")
                query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
                    sql.Identifier(table),
                    sql.SQL(", ").join(sql.Identifier(c) for c in row),
                    sql.SQL(", ").join(sql.Placeholder() for _ in row),
                )
                values = [psycopg2.extras.Json(v) if isinstance(v, (dict, list)) else v for v in row.values()]
                cur.execute(query, values)
                inserted += cur.rowcount
            return inserted

        return self._run(work, read_only=False)
