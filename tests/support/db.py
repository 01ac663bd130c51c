"""A throw-away PostgreSQL database per test run, and helpers that seed Fonana rows.

Rows follow the Prisma layout of PROTOCOL.md section 6: quoted camelCase columns,
TEXT ids, enum types, naive UTC timestamps, "updatedAt" without a default.
"""
from __future__ import annotations

import datetime as dt
import os
import secrets
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.extras

REPO = Path(__file__).resolve().parents[2]
# The reference DDL of the Fonana tables, in the repository (never a path outside it:
# CI runs a clean clone).
SCHEMA_FILE = REPO / "fonana_realtime" / "store" / "schema" / "postgres.sql"
# A notification ROW as the contract gives it (PROTOCOL.md 4), and the NotificationType enum.
ROW_KEYS = frozenset({"id", "userId", "type", "title", "message", "isRead", "metadata", "createdAt"})
NOTIFICATION_TYPES = ("LIKE_POST", "LIKE_COMMENT", "COMMENT_POST", "REPLY_COMMENT", "NEW_SUBSCRIBER",
                      "POST_PURCHASE", "MESSAGE_PURCHASE", "SUBSCRIPTION_PURCHASE", "TIP_RECEIVED", "POST_SALE",
                      "SYSTEM_ANNOUNCEMENT", "NEW_MESSAGE", "NEW_POST_FROM_SUBSCRIPTION")
ADMIN_URL = os.environ.get("FONANA_TEST_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres")


def utcnow() -> dt.datetime:
    """UTC "now" as a naive datetime: what TIMESTAMP(3) columns hold."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def schema_path() -> Path:
    if SCHEMA_FILE.is_file() and SCHEMA_FILE.stat().st_size > 0:
        return SCHEMA_FILE
    raise FileNotFoundError(f"no schema file at {SCHEMA_FILE}")


def postgres_available() -> bool:
    try:
        psycopg2.connect(ADMIN_URL, connect_timeout=3).close()
        return True
    except psycopg2.Error:
        return False


def proxied(pg_url: str):
    """A TcpProxy (tests/support/tcpproxy.py) in front of `pg_url`'s server, and the URL a
    server reaches the database through it by (a 2 s connect timeout: a cut proxy is an
    outage the server must notice, not wait on): (proxy, url)."""
    from .tcpproxy import TcpProxy
    parts = urlsplit(pg_url)
    proxy = TcpProxy(parts.hostname, parts.port or 5432)
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
    return proxy, urlunsplit((parts.scheme, netloc, parts.path, "connect_timeout=2", ""))


class TestDatabase:
    """CREATE DATABASE with a random name, load the schema; DROP it at the end."""

    __test__ = False  # not a pytest test class

    def __init__(self, admin_url: str = ADMIN_URL, prefix: str = "fonana_rt_test_"):
        self.admin_url = admin_url
        self.name = prefix + secrets.token_hex(6)
        parts = urlsplit(admin_url)
        self.url = urlunsplit((parts.scheme, parts.netloc, "/" + self.name, "", ""))
        self.schema_file: Path | None = None

    def _admin(self):
        conn = psycopg2.connect(self.admin_url, connect_timeout=5)
        conn.autocommit = True
        return conn

    def create(self) -> "TestDatabase":
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            conn.close()
        self.schema_file = schema_path()
        ddl = self.schema_file.read_text()
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(ddl)
        finally:
            conn.close()
        return self

    def drop(self) -> None:
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            conn.close()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


class Seed:
    """Inserts Fonana rows with sensible defaults; every id is fresh unless given, so tests
    never collide. The one row seeder of the suite, two ways in:

    - `Seed(url)`: psycopg2 straight into a PostgreSQL database (the black-box suite);
    - `Seed.into_store(store)`: through `Store.insert_rows`, the path the demo seed takes,
      on either backend (tests/test_store.py).

    Arguments read the same everywhere: owner first (`post(creator_id)`,
    `notification(user_id)`), then keywords; `id=` names a row."""

    def __init__(self, url: str | None = None, *, store=None):
        self.url = url
        self.store = store
        self.conn = None
        if store is None:
            self.conn = psycopg2.connect(url)
            self.conn.autocommit = True
        now = utcnow()      # to the millisecond, as TIMESTAMP(3) keeps it
        self.now = now.replace(microsecond=now.microsecond // 1000 * 1000)

    @classmethod
    def into_store(cls, store) -> "Seed":
        return cls(store=store)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def execute(self, sql: str, params=()) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)

    def query(self, sql: str, params=()) -> list[dict]:
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, params)
            return [dict(r) for r in cur.fetchall()]

    def insert(self, table: str, row: dict) -> None:
        if self.store is not None:
            self.store.insert_rows(table, [row])
            return
        columns = ",".join(f'"{c}"' for c in row)
        values = [psycopg2.extras.Json(v) if isinstance(v, (dict, list)) else v for v in row.values()]
        self.execute(f'INSERT INTO "{table}" ({columns}) VALUES ({",".join(["%s"] * len(row))})', values)

    # -- rows -------------------------------------------------------------------------
    def user(self, id: str | None = None, *, nickname: str | None = None, is_creator: bool = False) -> str:
        uid = id or new_id("u")
        now = utcnow()
        self.insert("users", {"id": uid, "wallet": "wallet-" + uid, "nickname": nickname or ("nick-" + uid),
                              "isCreator": is_creator, "createdAt": now, "updatedAt": now})
        return uid

    def post(self, creator_id: str, *, id: str | None = None, locked: bool = False, tier: str | None = None,
             price: float | None = None, title: str = "A post") -> str:
        pid = id or new_id("p")
        now = utcnow()
        self.insert("posts", {"id": pid, "creatorId": creator_id, "title": title, "content": "content of " + pid,
                              "type": "text", "isLocked": locked, "isPremium": tier is not None, "price": price,
                              "minSubscriptionTier": tier, "createdAt": now, "updatedAt": now})
        return pid

    def subscription(self, user_id: str, creator_id: str, *, active: bool = True, status: str = "COMPLETED",
                     valid_until: dt.datetime | None = None, plan: str = "premium") -> str:
        sid = new_id("s")
        if valid_until is None:
            valid_until = utcnow() + dt.timedelta(days=30)
        self.insert("subscriptions", {"id": sid, "userId": user_id, "creatorId": creator_id, "plan": plan,
                                      "price": 1.5, "subscribedAt": utcnow() - dt.timedelta(days=1),
                                      "validUntil": valid_until, "isActive": active, "paymentStatus": status})
        return sid

    def purchase(self, user_id: str, post_id: str, *, status: str = "COMPLETED") -> str:
        pid = new_id("pp")
        self.insert("post_purchases", {"id": pid, "postId": post_id, "userId": user_id, "price": 0.5,
                                       "purchasedAt": utcnow(), "paymentStatus": status})
        return pid

    def notification(self, user_id: str, *, type: str = "SYSTEM_ANNOUNCEMENT", title: str = "Hello",
                     message: str = "A message", read: bool = False, metadata=None,
                     created_at: dt.datetime | None = None, id: str | None = None) -> str:
        nid = id or new_id("n")
        self.insert("notifications", {"id": nid, "userId": user_id, "type": type, "title": title,
                                      "message": message, "isRead": read, "metadata": metadata,
                                      "createdAt": created_at or utcnow()})
        return nid

    # -- reads ------------------------------------------------------------------------
    def notification_row(self, nid: str) -> dict | None:
        rows = self.query('SELECT * FROM "notifications" WHERE "id" = %s', (nid,))
        return rows[0] if rows else None

    def notifications_of(self, user_id: str) -> list[dict]:
        return self.query('SELECT * FROM "notifications" WHERE "userId" = %s ORDER BY "createdAt"', (user_id,))

    def unread_count(self, user_id: str) -> int:
        rows = self.query('SELECT count(*) AS n FROM "notifications" WHERE "userId" = %s AND NOT "isRead"',
                          (user_id,))
        return rows[0]["n"]
