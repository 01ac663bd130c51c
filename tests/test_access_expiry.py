"""Access that ends while connected (issue 8.6; PROTOCOL.md 2.3, error `access_revoked`).

A `post_P` channel held through a subscription is held only until that subscription's
`validUntil`: at that moment the worker's one schedule (access_expiry.py) asks the
database again and, if access is gone, unsubscribes the connection with an `error`
frame `access_revoked` naming the channel. A subscription renewed in the meantime keeps
the channel; author, open post and purchase never lapse.
"""
from __future__ import annotations

import datetime as dt
import math
import time

import gevent
import pytest
from gevent.event import Event

from fonana_realtime.access_expiry import AccessExpiry
from fonana_realtime.store import StoreUnavailable
from support.db import utcnow

# seconds from seeding to the subscription's validUntil: the connects and subscribes (and
# the renewal, a second before the end) must come before it on a loaded machine
LAPSE_IN = 6.0


# -- the schedule alone (pure logic: connections are stand-ins) ---------------------------------

class _Conn:
    """What the schedule reads of a Connection (hashed by identity, like the real one)."""

    def __init__(self, n, key="post_p"):
        self.id, self.closed, self.closing, self.channels = n, False, False, {key}


_conn = _Conn


def _schedule(answers: dict):
    """An AccessExpiry whose re-check answers from `answers` ({conn id: until or exc});
    revocations are recorded in order, `done` is set when `answers` names that many."""
    revoked, checked, done = [], [], Event()
    expected = sum(1 for v in answers.values() if v is None)

    def recheck(conn, key):
        checked.append(conn.id)
        answer = answers[conn.id]
        if isinstance(answer, Exception):
            answers[conn.id] = None           # the database answers the retry
            raise answer
        return answer

    def revoke(conn, key, channel):
        revoked.append((conn.id, channel))
        conn.channels.discard(key)
        if len(revoked) == expected:
            done.set()

    return AccessExpiry(recheck, revoke), revoked, checked, done


def test_the_schedule_revokes_in_time_order_and_keeps_what_was_renewed(monkeypatch):
    import fonana_realtime.access_expiry as module
    monkeypatch.setattr(module, "RETRY_SECONDS", 0.05)
    now = time.time()
    a, b, c, d, e = (_conn(n) for n in range(5))
    schedule, revoked, checked, done = _schedule({
        0: None, 1: None, 2: now + 3600, 3: None, 4: StoreUnavailable()})
    schedule.watch(b, "post_p", now + 0.2, {"ch": "b"})
    schedule.watch(a, "post_p", now + 0.1, {"ch": "a"})
    schedule.watch(c, "post_p", now + 0.1, {"ch": "c"})          # renewed: checked, kept
    schedule.watch(d, "post_p", now + 0.1, {"ch": "d"})
    schedule.forget(d, "post_p")                                  # unsubscribed: never checked
    schedule.watch(e, "post_p", now + 0.1, {"ch": "e"})          # database down: retried
    worker = gevent.spawn(schedule.run)
    try:
        assert done.wait(10), (revoked, checked)
    finally:
        worker.kill()
    assert revoked[0] == (0, {"ch": "a"})      # earliest first; ties in the order watched
    assert sorted(r[0] for r in revoked) == [0, 1, 4] and (0, {"ch": "a"}) in revoked
    assert 3 not in checked and checked.count(4) == 2 and checked.count(2) == 1
    assert len(schedule) == 1                                     # c, until its new end


def test_lasting_access_is_never_scheduled_and_closed_connections_are_forgotten():
    schedule, revoked, checked, _ = _schedule({})
    conn = _conn(1)
    schedule.watch(conn, "post_p", math.inf, None)
    assert len(schedule) == 0
    schedule.watch(conn, "post_p", time.time() + 3600, None)
    conn.closed = True
    schedule._purge()
    assert len(schedule) == 0


# -- through a real server ----------------------------------------------------------------------

@pytest.mark.postgres
def test_a_subscription_that_lapses_while_connected_revokes_the_channel(server, seed):
    creator = seed.user(is_creator=True)
    post = seed.post(creator, locked=True, tier="premium")
    lapsing, renewed, buyer = seed.user(), seed.user(), seed.user()
    until = utcnow() + dt.timedelta(seconds=LAPSE_IN)
    seed.subscription(lapsing, creator, valid_until=until)
    seed.subscription(renewed, creator, valid_until=until - dt.timedelta(seconds=1))   # checked first
    seed.purchase(buyer, post)
    seed.subscription(buyer, creator, valid_until=until)        # the purchase outlives it
    channel = {"type": "post", "postId": post}
    tabs = {uid: server.connect(uid) for uid in (lapsing, renewed, buyer)}
    for ws in tabs.values():
        ws.subscribe(channel)
    # renewed while connected, as soon as its end is scheduled (before that end comes)
    seed.execute('UPDATE "subscriptions" SET "validUntil" = %s WHERE "userId" = %s',
                 (utcnow() + dt.timedelta(days=30), renewed))
    first = {"type": "post_liked", "postId": post, "userId": buyer, "likesCount": 1}
    server.publish({"event": first})
    for ws in tabs.values():
        ws.expect_event(first)

    frame = tabs[lapsing].expect_error("access_revoked", "Access to channel revoked", timeout=LAPSE_IN + 15)
    assert frame["data"]["channel"] == channel, frame
    tabs[lapsing].ping()                       # the connection lives; only the channel went

    second = {"type": "post_liked", "postId": post, "userId": buyer, "likesCount": 2}
    server.publish({"event": second})
    tabs[renewed].expect_event(second)         # renewed before its end: kept
    tabs[buyer].expect_event(second)           # a purchase does not lapse
    tabs[lapsing].barrier()                    # nothing more for the lapsed one
    tabs[lapsing].subscribe_denied(channel)    # and it cannot take the channel back
    for uid in (renewed, buyer):
        tabs[uid].barrier()                    # no `access_revoked` for them


@pytest.mark.postgres
def test_unsubscribing_before_the_end_gets_no_revocation(server, seed):
    creator = seed.user(is_creator=True)
    post = seed.post(creator, locked=True)
    fan = seed.user()
    # ends in 3 s: the connect, subscribe and unsubscribe come first even on a loaded machine
    seed.subscription(fan, creator, valid_until=utcnow() + dt.timedelta(seconds=3))
    channel = {"type": "post", "postId": post}
    ws = server.connect(fan)
    ws.subscribe(channel)
    ws.unsubscribe(channel)
    other = seed.user()
    seed.subscription(other, creator, valid_until=utcnow() + dt.timedelta(seconds=4))
    witness = server.connect(other)
    witness.subscribe(channel)
    # the witness's later end has been processed once it is revoked: the fan's came first
    witness.expect_error("access_revoked", timeout=15)
    ws.barrier()
