"""revocations.py and control.py on their own: which tokens a revocation refuses, how the
worker's view moves, and what a control message does to a worker's connections (the
connections are recorders; the store the SQLite one in a temporary DATA_DIR)."""
from __future__ import annotations

import json
import time

from fonana_realtime import close_codes
from fonana_realtime.broker.memory import MemoryBroker
from fonana_realtime.control import Control
from fonana_realtime.hub import Hub
from fonana_realtime.revocations import Revocations, SqliteRevocationStore

DAY = 86400.0


class Clock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_a_revocation_refuses_tokens_issued_before_it_and_tokens_without_iat(tmp_path):
    clock = Clock()
    rev = Revocations(SqliteRevocationStore(str(tmp_path)), 30 * DAY, clock=clock)
    rev.revoke("u1", clock.now)
    assert rev.refuses("u1", clock.now - 1) and rev.refuses("u1", None)
    assert not rev.refuses("u1", clock.now) and not rev.refuses("u1", clock.now + 5)
    assert not rev.refuses("u2", clock.now - 1)
    clock.now += 30 * DAY + 1                                   # outlived every token it was about
    assert not rev.refuses("u1", None)


def test_the_later_before_wins_and_a_reload_reads_the_file_again(tmp_path):
    clock = Clock()
    rev = Revocations(SqliteRevocationStore(str(tmp_path)), 30 * DAY, clock=clock)
    rev.revoke("u1", clock.now)
    rev.revoke("u1", clock.now - 100)                           # an older call arriving late
    again = Revocations(SqliteRevocationStore(str(tmp_path)), 30 * DAY, clock=clock)
    assert again.reload() and again.before("u1") == clock.now
    again.unrevoke("u1")
    assert rev.reload() and rev.before("u1") is None


class Conn:
    _ids = iter(range(1, 1000))

    def __init__(self, user_id, issued_at=None, channels=()):
        self.id = next(self._ids)
        self.user_id, self.issued_at = user_id, issued_at
        self.channels = set(channels)
        self.closing = self.closed = False
        self.closes = []

    def close(self, code, reason=None):
        self.closes.append((code, reason))
        self.closing = True


class Commands:
    def __init__(self):
        self.revoked = []

    def revoke(self, conn, key, channel):
        self.revoked.append((conn.id, key, channel))


def control(tmp_path):
    hub, commands, broker = Hub(), Commands(), MemoryBroker()
    rev = Revocations(SqliteRevocationStore(str(tmp_path)), 30 * DAY)
    return Control(hub, commands, rev, broker), hub, commands, rev


def test_control_messages_act_on_that_users_connections_only(tmp_path):
    ctl, hub, commands, rev = control(tmp_path)
    now = time.time()
    old, new, other = Conn("u1", issued_at=now - 1000, channels=["post_p"]), Conn("u1", issued_at=now), Conn("u2")
    for conn in (old, new, other):
        hub.add(conn)
    ctl.send("unsubscribe", "u1", key="post_p", channel={"type": "post", "postId": "p"})
    assert commands.revoked == [(old.id, "post_p", {"type": "post", "postId": "p"})]
    ctl.send("revoke", "u1", before=now - 500)                  # closes the old token's only
    assert old.closes == [(close_codes.TOKEN_REVOKED, None)] and new.closes == [] and other.closes == []
    ctl.send("disconnect", "u1", code=4321, reason="bye")
    assert new.closes == [(4321, "bye")] and other.closes == []
    ctl.send("unrevoke", "u1")
    assert not rev.refuses("u1", now - 1000)


def test_a_malformed_control_message_is_dropped(tmp_path):
    ctl, hub, _, _ = control(tmp_path)
    conn = Conn("u1")
    hub.add(conn)
    for data in (b"not json", b"[]", json.dumps({"op": "explode", "userId": "u1"}).encode(),
                 json.dumps({"op": "disconnect", "userId": 5}).encode()):
        ctl.on_message(data)
    assert conn.closes == []
