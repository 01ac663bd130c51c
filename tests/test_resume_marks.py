"""Where dropped legacy connections left off: the same rules in process and in real Redis."""
from __future__ import annotations

import secrets

import pytest

from fonana_realtime.resume_marks import MemoryMarks, RedisMarks
from support.redis_server import shared_redis

WINDOW = 120.0


class Clock:
    def __init__(self):
        self.now = 1_764_650_000.25

    def __call__(self):
        return self.now


@pytest.fixture(params=["memory", "redis"])
def marks(request):
    clock = Clock()
    if request.param == "memory":
        yield MemoryMarks(WINDOW, clock=clock), clock
        return
    client = shared_redis()
    prefix = f"test-resume-{secrets.token_hex(6)}:"
    yield RedisMarks(client, prefix, WINDOW, clock=clock), clock
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)


def test_a_mark_is_recalled_within_the_window_only(marks):
    store, clock = marks
    store.remember("u1", {"post_p": ("e1", 7), "user_u1": ("e2", 3)}, started_at=clock.now - 10)
    got = store.recall("u1")
    assert {s: m[:2] for s, m in got.items()} == {"post_p": ("e1", 7), "user_u1": ("e2", 3)}
    assert store.recall("u2") == {}
    clock.now += WINDOW
    assert store.recall("u1") == {}


def test_of_two_tabs_that_dropped_the_lowest_position_wins(marks):
    store, clock = marks
    started = clock.now - 60
    store.remember("u1", {"post_p": ("e1", 9)}, started_at=started)
    clock.now += 0.5
    store.remember("u1", {"post_p": ("e1", 5)}, started_at=started)     # the other tab, behind
    clock.now += 0.5
    store.remember("u1", {"post_p": ("e1", 8)}, started_at=started)
    assert store.recall("u1")["post_p"][:2] == ("e1", 5)


def test_a_connection_that_started_after_a_mark_replaces_it(marks):
    """The tab resumed from offset 5, went on to 12, dropped again: it must not be taken
    back to 5 (it would see 6..12 twice)."""
    store, clock = marks
    store.remember("u1", {"post_p": ("e1", 5)}, started_at=clock.now - 60)
    clock.now += 3                                  # reconnected here, resumed, then dropped
    store.remember("u1", {"post_p": ("e1", 12)}, started_at=clock.now - 1)
    assert store.recall("u1")["post_p"][:2] == ("e1", 12)


def test_a_mark_of_another_epoch_is_replaced(marks):
    store, clock = marks
    started = clock.now - 60
    store.remember("u1", {"post_p": ("old", 2)}, started_at=started)
    store.remember("u1", {"post_p": ("new", 40)}, started_at=started)
    assert store.recall("u1")["post_p"][:2] == ("new", 40)


def test_redis_keeps_one_key_per_user_that_expires_with_the_window():
    client = shared_redis()
    prefix = f"test-resume-{secrets.token_hex(6)}:"
    store = RedisMarks(client, prefix, WINDOW)
    try:
        store.remember("u1", {"post_p": ("e1", 7)}, started_at=0.0)
        key = store.key("u1")
        assert key == prefix + "marks:{u1}"
        assert 0 < client.ttl(key) <= WINDOW
        assert client.get(key).startswith(b"post_p e1|7|")
    finally:
        client.delete(store.key("u1"))


# -- bounded per user (issue 18.4) --------------------------------------------------------------

def bounded(kind: str, clock, max_marks: int):
    if kind == "memory":
        return MemoryMarks(WINDOW, clock=clock, max_marks=max_marks), None
    client = shared_redis()
    return RedisMarks(client, f"test-resume-{secrets.token_hex(6)}:", WINDOW, clock=clock,
                      max_marks=max_marks), client


def stored_fields(store, client, user) -> int:
    if client is None:
        return len(store._users.get(user, {}))
    stored = client.get(store.key(user))
    return len(stored.split(b"\n")) if stored else 0


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_user_keeps_at_most_max_marks_the_newest_written(kind):
    """One user's tabs dropping while subscribed to ever new channels: the marks stay at
    the bound and the last drop's are all kept."""
    clock = Clock()
    store, client = bounded(kind, clock, 50)
    try:
        for drop in range(6):
            clock.now += 1
            store.remember("u1", {f"post_{drop}_{i}": ("e1", i) for i in range(30)}, started_at=clock.now - 1)
            assert stored_fields(store, client, "u1") <= 50
        got = store.recall("u1")
        assert len(got) == 50
        assert {f"post_5_{i}" for i in range(30)} <= set(got)             # the newest drop, whole
        assert {f"post_4_{i}" for i in range(30)} & set(got)               # then the one before
        assert not {f"post_3_{i}" for i in range(30)} & set(got)
    finally:
        if client is not None:
            client.delete(store.key("u1"))


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_expired_marks_are_removed_not_only_ignored(kind):
    """The hash's EXPIRE is refreshed by every write: without pruning, stale fields of
    a user who keeps dropping would stay for ever (20,296 fields in 60 s, issue 18)."""
    clock = Clock()
    store, client = bounded(kind, clock, 10)
    try:
        store.remember("u1", {f"post_old{i}": ("e1", i) for i in range(8)}, started_at=clock.now - 1)
        clock.now += WINDOW + 1
        store.remember("u1", {f"post_new{i}": ("e1", i) for i in range(5)}, started_at=clock.now - 1)
        assert stored_fields(store, client, "u1") == 5
        assert set(store.recall("u1")) == {f"post_new{i}" for i in range(5)}
    finally:
        if client is not None:
            client.delete(store.key("u1"))


def test_of_marks_written_at_different_times_only_those_within_the_window_are_recalled(marks):
    store, clock = marks
    store.remember("u1", {f"post_a{i}": ("e1", i) for i in range(5)}, started_at=clock.now - 1)
    clock.now += 100
    store.remember("u1", {f"post_b{i}": ("e1", i) for i in range(3)}, started_at=clock.now - 1)
    clock.now += 30                                 # the first five are 130 s old
    assert set(store.recall("u1")) == {f"post_b{i}" for i in range(3)}
    assert store.recall("u1")["post_b2"][:2] == ("e1", 2)
