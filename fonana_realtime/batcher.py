"""Lookups by key, asked for by many greenlets, answered by one query per event-loop turn.

Why: in a reconnect storm every handshake asks whether its user exists and every
notifications subscribe asks for the user's unread list. On PostgreSQL each was one
psycopg2 round trip through gevent: ~70 µs of the worker's CPU alone, ~210 µs per connect
for the two when 200 are in flight (the pool's waits), and as much again in the database's
backend (issue 22). The keys asked for in one turn of the loop go out as one query
(`WHERE "id" = ANY(%s)`): 200 connects in flight made ~10 queries instead of 400,
~25 µs per connect for both lookups (bench micro-benchmark, docs/BENCHMARKS.md, issue 22).

`Batcher.get(key)` parks the calling greenlet; at the end of the turn (the loop's
callbacks, before it waits for I/O again) the keys asked for meanwhile go to
`fetch(keys) -> {key: value}` in a greenlet of their own, and every caller gets its
key's value (`missing` if the answer lacks it) or the exception `fetch` raised (`lost()` if its
greenlet was killed: the callers handle the one error they know, never a GreenletExit
that would end their own greenlet as if it had finished). A key
asked for while its batch is already out joins the next batch: every answer comes from a
query that started after it was asked for. At most `in_flight` batches are out at once
(the others wait, gathering more keys, for one to come back) and a batch holds at most
`max_keys` keys: a storm's keys do not take every pooled database connection, and a
query's parameter stays small.

`immediate=True` asks `fetch([key])` at once in the caller's greenlet: for a store that
answers in process (SQLite: no round trip to share, and a query does not yield), where
parking and waking each caller cost ~1 % more instructions per connect than they saved
(bench/storm_instructions.py, issue 22).
"""
from __future__ import annotations

from typing import Any, Callable, Hashable

import gevent
from gevent.event import AsyncResult

MAX_KEYS = 500          # one ANY(array) parameter; a turn of a storm brings tens
IN_FLIGHT = 2           # batches out at once per batcher


class Batcher:
    __slots__ = ("fetch", "missing", "lost", "max_keys", "in_flight", "immediate", "_pending", "_out",
                 "_scheduled", "_schedule")

    def __init__(self, fetch: Callable[[list], dict], *, missing: Any = None,
                 lost: Callable[[str], Exception] = RuntimeError, max_keys: int = MAX_KEYS,
                 in_flight: int = IN_FLIGHT, immediate: bool = False,
                 schedule: Callable[[Callable[[], None]], Any] | None = None):
        if max_keys < 1 or in_flight < 1:
            raise ValueError("max_keys and in_flight must be at least 1")
        self.fetch = fetch
        self.missing = missing
        self.lost = lost
        self.max_keys = max_keys
        self.in_flight = in_flight
        self.immediate = immediate
        self._pending: dict[Hashable, AsyncResult] = {}    # asked for, not yet sent
        self._out = 0                                       # batches being fetched
        self._scheduled = False
        # how the end of the turn is reached (tests pass their own; a worker: its loop)
        self._schedule = schedule or (lambda callback: gevent.get_hub().loop.run_callback(callback))

    def get(self, key: Hashable) -> Any:
        """The value `fetch` gives for `key`, from a query started after this call;
        raises what `fetch` raised."""
        if self.immediate:
            return self.fetch([key]).get(key, self.missing)
        waiter = self._pending.get(key)
        if waiter is None:
            waiter = self._pending[key] = AsyncResult()
            self._wake()
        return waiter.get()

    def _wake(self):
        if not self._scheduled and self._pending and self._out < self.in_flight:
            self._scheduled = True
            self._schedule(self._send)

    def _send(self):
        """End of the turn: send what was asked for, in batches of at most max_keys."""
        self._scheduled = False
        while self._pending and self._out < self.in_flight:
            pending = self._pending
            if len(pending) <= self.max_keys:
                batch, self._pending = pending, {}
            else:
                keys = list(pending)[:self.max_keys]
                batch = {key: pending.pop(key) for key in keys}
            self._out += 1
            gevent.spawn(self._answer, batch)

    def _answer(self, batch: dict):
        try:
            try:
                found = self.fetch(list(batch))
            except BaseException as exc:        # every waiter learns of it, a kill too
                error = exc if isinstance(exc, Exception) else self.lost("the lookup was interrupted")
                for waiter in batch.values():
                    waiter.set_exception(error)
                if error is not exc:
                    raise
                return
            missing = self.missing
            for key, waiter in batch.items():
                waiter.set(found.get(key, missing))
        finally:
            self._out -= 1
            self._wake()
