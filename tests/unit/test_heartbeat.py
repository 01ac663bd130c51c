"""heartbeat.sweep over stand-in connections (pure logic: the clock is passed in)."""
from __future__ import annotations

from types import SimpleNamespace

from fonana_realtime import heartbeat


class Conn:
    def __init__(self, conn_id, broken=False):
        self.id, self.user_id, self.broken = conn_id, "u", broken
        self.closed = self.closing = self.awaiting_pong = False
        self.close_deadline = None
        self.expires_at = 10_000.0
        self.next_ping = 0.0
        self.pinged = self.aborted = 0

    def ping(self, frame, next_ping):
        if self.broken:
            raise AttributeError("a bug in this connection's state")
        self.pinged += 1
        self.next_ping = next_ping

    def abort(self):
        self.aborted += 1
        self.closed = True


SETTINGS = SimpleNamespace(jwt_leeway_seconds=0, ping_interval=25)


def test_a_connection_that_raises_is_cut_and_the_sweep_goes_on_to_the_others():
    first, broken, last = Conn("a"), Conn("b", broken=True), Conn("c")
    hub = SimpleNamespace(connections={first: None, broken: None, last: None})
    heartbeat.sweep(hub, SETTINGS, now_mono=100.0, now_wall=1_000.0)
    assert (first.pinged, last.pinged) == (1, 1)      # the one after the bug was pinged too
    assert broken.aborted == 1 and first.aborted == last.aborted == 0


def test_a_peer_silent_since_the_last_ping_is_dropped_and_a_due_one_pinged():
    silent, due = Conn("a"), Conn("b")
    silent.awaiting_pong = True
    hub = SimpleNamespace(connections={silent: None, due: None})
    heartbeat.sweep(hub, SETTINGS, now_mono=100.0, now_wall=1_000.0)
    assert silent.aborted == 1 and silent.pinged == 0
    assert due.pinged == 1 and due.next_ping == 125.0
