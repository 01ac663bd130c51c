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


class TestDatabase:
    """CREATE DATABASE with a random name, load the schema; DROP it at the end."""

    __test__ = False  # not a pytest test class

    def __init__(self, admin_url: str = ADMIN_URL):
        self.admin_url = admin_url
        self.name = "fonana_rt_test_" + secrets.token_hex(6)
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
    """Inserts Fonana rows with psycopg2; every id is fresh so tests never collide."""

    def __init__(self, url: str):
        self.url = url
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, params=()) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)

    def query(self, sql: str, params=()) -> list[dict]:
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, params)
            return [dict(r) for r in cur.fetchall()]

    # -- rows -------------------------------------------------------------------------
    def user(self, id: str | None = None, *, nickname: str | None = None, is_creator: bool = False) -> str:
        uid = id or new_id("u")
        now = utcnow()
        self.execute(
            'INSERT INTO "users" ("id","wallet","nickname","isCreator","createdAt","updatedAt") '
            "VALUES (%s,%s,%s,%s,%s,%s)",
            (uid, "wallet-" + uid, nickname or ("nick-" + uid), is_creator, now, now),
        )
        return uid

    def post(self, creator_id: str, *, id: str | None = None, locked: bool = False, tier: str | None = None,
             price: float | None = None, title: str = "A post") -> str:
        pid = id or new_id("p")
        now = utcnow()
        self.execute(
            'INSERT INTO "posts" ("id","creatorId","title","content","type","isLocked","isPremium","price",'
            '"minSubscriptionTier","createdAt","updatedAt") VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)',
            (pid, creator_id, title, "content of " + pid, "text", locked, tier is not None, price, tier, now, now),
        )
        return pid

    def subscription(self, user_id: str, creator_id: str, *, active: bool = True, status: str = "COMPLETED",
                     valid_until: dt.datetime | None = None, plan: str = "premium") -> str:
        sid = new_id("s")
        if valid_until is None:
            valid_until = utcnow() + dt.timedelta(days=30)
        self.execute(
            'INSERT INTO "subscriptions" ("id","userId","creatorId","plan","price","subscribedAt","validUntil",'
            '"isActive","paymentStatus") VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)',
            (sid, user_id, creator_id, plan, 1.5, utcnow() - dt.timedelta(days=1), valid_until, active, status),
        )
        return sid

    def purchase(self, user_id: str, post_id: str, *, status: str = "COMPLETED") -> str:
        pid = new_id("pp")
        self.execute(
            'INSERT INTO "post_purchases" ("id","postId","userId","price","purchasedAt","paymentStatus") '
            "VALUES (%s,%s,%s,%s,%s,%s)",
            (pid, post_id, user_id, 0.5, utcnow(), status),
        )
        return pid

    def notification(self, user_id: str, *, type: str = "SYSTEM_ANNOUNCEMENT", title: str = "Hello",
                     message: str = "A message", read: bool = False, metadata=None,
                     created_at: dt.datetime | None = None, id: str | None = None) -> str:
        nid = id or new_id("n")
        self.execute(
            'INSERT INTO "notifications" ("id","userId","type","title","message","isRead","metadata","createdAt") '
            "VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
            (nid, user_id, type, title, message, read,
             psycopg2.extras.Json(metadata) if metadata is not None else None, created_at or utcnow()),
        )
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
