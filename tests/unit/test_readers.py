"""readers.Readers: the greenlets that take the clients' reads (no greenlet per idle client).

`take` is called in the hub (a socket watcher's callback): here through the loop's
callbacks, as a watcher would, with reads that are plain functions.
"""
from __future__ import annotations

import logging

import gevent
from gevent import get_hub, getcurrent
from gevent.event import Event

from fonana_realtime.readers import MAX_IDLE, Readers


def _take(readers, read):
    get_hub().loop.run_callback(readers.take, read)


def _settle():
    for _ in range(5):
        gevent.sleep(0)


def test_a_read_runs_in_a_greenlet_that_parks_and_takes_the_next():
    readers = Readers(get_hub())
    ran = []
    _take(readers, lambda: ran.append(getcurrent()))
    _settle()
    assert len(ran) == 1 and ran[0] is not get_hub()
    assert readers.idle == [ran[0]]
    _take(readers, lambda: ran.append(getcurrent()))
    _settle()
    assert ran[1] is ran[0], "the parked greenlet was not reused"
    assert readers.idle == [ran[0]]


def test_a_read_that_waits_does_not_hold_up_another():
    readers = Readers(get_hub())
    release, order = Event(), []

    def waits():
        order.append("waiting")
        release.wait(5)
        order.append("released")

    _take(readers, waits)
    _take(readers, lambda: order.append("other"))
    _settle()
    assert order == ["waiting", "other"]
    release.set()
    _settle()
    assert order == ["waiting", "other", "released"]
    assert len(readers.idle) == 2


def test_no_more_than_max_idle_greenlets_stay_parked():
    readers = Readers(get_hub())
    release = Event()
    for _ in range(MAX_IDLE + 5):
        _take(readers, lambda: release.wait(5))
    _settle()
    assert readers.idle == []            # all of them wait: each read got a greenlet
    release.set()
    _settle()
    assert len(readers.idle) == MAX_IDLE
    assert all(not g.dead for g in readers.idle)


def test_a_failing_read_is_logged_and_the_greenlet_goes_on(caplog):
    readers = Readers(get_hub())
    ran = []

    def fails():
        ran.append(getcurrent())
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="fonana_realtime.readers"):
        _take(readers, fails)
        _settle()
    assert any(r.getMessage() == "read failed" and r.exc_info for r in caplog.records)
    _take(readers, lambda: ran.append(getcurrent()))
    _settle()
    assert ran[1] is ran[0]
