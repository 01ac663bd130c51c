"""Fixtures for tests/test_store.py: a throw-away PostgreSQL database and a store on each backend.

- ``store_pg_url`` (module scope): a fresh database ``fonana_rt_store_<hex>`` on
  127.0.0.1:5432 with ``fonana_realtime/store/schema/postgres.sql`` loaded and a
  far-from-UTC session time zone (so anything relying on the session clock
  instead of a UTC parameter shows up), dropped afterwards.
- ``store`` (per test, parametrised): a PostgresStore on that database (tables
  emptied first) or a SqliteStore on a new file (which holds the demo rows).
- ``rows``: the suite's one row seeder (``support.db.Seed``) writing users/posts/
  subscriptions/purchases/notifications through ``store.insert_rows``, the same path
  the demo seed uses.

The admin URL can be overridden with ``FONANA_TEST_PG_ADMIN_URL``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from fonana_realtime.store import open_store
from support.db import ADMIN_URL, Seed

SCHEMA = Path(__file__).resolve().parents[1] / "fonana_realtime" / "store" / "schema" / "postgres.sql"
TABLES = '"notifications", "post_purchases", "subscriptions", "posts", "users"'


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _admin() -> "psycopg2.extensions.connection":
    try:
        conn = psycopg2.connect(ADMIN_URL, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {urlsplit(ADMIN_URL).netloc}: {exc} (run scripts/ensure-services)")
    conn.autocommit = True
    return conn


def drop_connections(url: str) -> None:
    """Terminate every other backend connected to the database of ``url`` (simulates a restart)."""
    name = urlsplit(url).path.lstrip("/")
    admin = _admin()
    try:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
    finally:
        admin.close()


@pytest.fixture(scope="module")
def store_pg_url():
    name = f"fonana_rt_store_{secrets.token_hex(6)}"
    admin = _admin()
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
        cur.execute(f"ALTER DATABASE \"{name}\" SET timezone TO 'Pacific/Kiritimati'")  # UTC+14
    url = _with_database(ADMIN_URL, name)
    try:
        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(SCHEMA.read_text(encoding="utf-8"))
        conn.close()
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _truncate(url: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE {TABLES} CASCADE")
    conn.close()


@pytest.fixture(
    params=[pytest.param("postgresql", marks=pytest.mark.postgres), pytest.param("sqlite")],
)
def store(request, tmp_path):
    if request.param == "postgresql":
        url = request.getfixturevalue("store_pg_url")
        _truncate(url)
        s = open_store(url, str(tmp_path / "unused"), pool_size=4)
    else:
        s = open_store(None, str(tmp_path / "data"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def rows(store) -> Seed:
    """The suite's one row seeder (tests/support/db.py), writing through ``store.insert_rows``."""
    return Seed.into_store(store)
