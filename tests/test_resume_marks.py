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


def test_redis_keeps_one_hash_per_user_that_expires_with_the_window():
    client = shared_redis()
    prefix = f"test-resume-{secrets.token_hex(6)}:"
    store = RedisMarks(client, prefix, WINDOW)
    try:
        store.remember("u1", {"post_p": ("e1", 7)}, started_at=0.0)
        key = store.key("u1")
        assert key == prefix + "resume:{u1}"
        assert 0 < client.ttl(key) <= WINDOW
        assert client.hget(key, "post_p").startswith(b"e1|7|")
    finally:
        client.delete(store.key("u1"))
