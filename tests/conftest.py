"""Fixtures of the black-box integration suite.

- `pg_url`: a fresh PostgreSQL database (random name) with the project schema; dropped at the end.
- `seed`: inserts users/posts/subscriptions/purchases/notifications into it.
- `server`: one real gunicorn (gevent, 1 worker) against that database, shared by the session.
- `alt_server`: a second PostgreSQL server with ALLOWED_ORIGINS, JWT_SECRET *and* a different
  NEXTAUTH_SECRET, and no WS_API_SECRET.
- `server_factory`: starts extra servers with other env for one test, stops them afterwards.
Tests that need PostgreSQL carry the `postgres` marker. The tests under tests/unit/ are pure (no
PostgreSQL, Redis, server or Node) and carry the `unit` marker: `make unit` runs them alone, so
nothing here imports psycopg2 or starts anything until a fixture asks for it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `support` is imported by absolute name whether or not tests/ becomes a package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.server import RUNNING, ServerFactory

UNIT_DIR = Path(__file__).resolve().parent / "unit"


def pytest_configure(config):
    config.addinivalue_line("markers", "postgres: needs the PostgreSQL server on 127.0.0.1:5432")
    config.addinivalue_line("markers", "unit: pure logic, runs without PostgreSQL, Redis, a server or Node")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if UNIT_DIR in item.path.parents:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def pg_url():
    from support.db import TestDatabase

    db = TestDatabase().create()
    try:
        yield db.url
    finally:
        db.drop()


@pytest.fixture(scope="session")
def seed(pg_url):
    from support.db import Seed

    s = Seed(pg_url)
    yield s
    s.close()


@pytest.fixture(scope="session")
def session_factory(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def server(session_factory, pg_url):
    return session_factory.start("server", database_url=pg_url)


@pytest.fixture(scope="session")
def alt_server(session_factory, pg_url):
    return session_factory.start(
        "alt-server", database_url=pg_url, api_key=None, nextauth_secret="nextauth-" + "x" * 24,
        env={"ALLOWED_ORIGINS": "https://fonana.me,https://app.fonana.me"},
    )


@pytest.fixture
def server_factory(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory)
    yield factory
    factory.stop_all()


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    for srv in list(RUNNING):
        srv.close_clients()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.when in ("setup", "call"):
        for srv in list(RUNNING):
            rep.sections.append((f"server output: {srv.name} ({srv.base_url})", srv.output_tail()))
