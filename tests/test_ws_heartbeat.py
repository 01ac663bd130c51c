"""Liveness (PROTOCOL.md 2.4) with WS_PING_INTERVAL=1: the server pings, a client that answers
stays connected, a client that never answers is dropped within a few intervals.

Here waiting is the point of the test; it is done with receive timeouts, never sleeps.
"""
import json
import time

import pytest
from websockets.frames import Opcode
from websockets.sync.client import ClientConnection

from support.rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWebSocket
from support.server import ServerFactory
from support.ws import open_ws

pytestmark = pytest.mark.postgres

INTERVAL = 1


@pytest.fixture(scope="module")
def hb_server(tmp_path_factory, pg_url):
    factory = ServerFactory(tmp_path_factory)
    srv = factory.start("heartbeat", database_url=pg_url, env={"WS_PING_INTERVAL": INTERVAL})
    yield srv
    factory.stop_all()


@pytest.fixture(scope="module")
def user(seed):
    return seed.user()


class PingCountingConnection(ClientConnection):
    """websockets' own client, counting the pings it receives (it still answers them itself)."""

    pings_received = 0

    def process_event(self, event):
        if getattr(event, "opcode", None) is Opcode.PING:
            self.pings_received += 1
        super().process_event(event)


def test_client_that_answers_pings_stays_connected(hb_server, user):
    ws = open_ws(hb_server.url(hb_server.token(user)), ping_interval=None,
                 create_connection=PingCountingConnection)
    with ws:
        # nothing to read while the pings come (one an interval, on a loaded machine later):
        # each receive timeout is a wait for the next; never a text frame
        deadline = time.monotonic() + 15 * INTERVAL
        while ws.conn.pings_received < 2 and time.monotonic() < deadline:
            with pytest.raises(TimeoutError):
                ws.recv_raw(timeout=0.5 * INTERVAL)
        ws.ping()
        assert ws.conn.pings_received >= 2, f"only {ws.conn.pings_received} WebSocket pings in ~15 intervals"
        assert ws.is_open


def _raw(srv, user):
    raw = RawWebSocket(srv.host, srv.port, f"/ws?token={srv.token(user)}")
    op, payload = raw.recv_frame()
    assert op == OP_TEXT and json.loads(payload)["type"] == "connected", (op, payload)
    return raw


def test_raw_client_that_answers_stays_and_one_that_never_answers_is_dropped(hb_server, user):
    """Side by side over the same few intervals: the server pings both; the one that answers
    with pongs stays open, the silent one is dropped (EOF or a close frame)."""
    with _raw(hb_server, user) as answering, _raw(hb_server, user) as silent:
        answered, silent_pings, silent_closed = 0, 0, None
        # at least ~3.5 intervals, then until both are seen (a loaded machine pings later)
        least = time.monotonic() + 3.5 * INTERVAL
        deadline = time.monotonic() + 15 * INTERVAL
        while time.monotonic() < deadline and (time.monotonic() < least or answered < 2 or silent_closed is None):
            try:
                op, payload = answering.recv_frame(timeout=0.05)
                assert op == OP_PING, f"unexpected frame {op:#x} {payload!r} while idle"
                answered += 1
                answering.send_frame(OP_PONG, payload)
            except TimeoutError:
                pass
            if silent_closed is None:
                try:
                    op, payload = silent.recv_frame(timeout=0.05)
                    if op == OP_PING:
                        silent_pings += 1  # and never answered
                    elif op == OP_CLOSE:
                        silent_closed = "close frame"
                except TimeoutError:
                    pass
                except (EOFError, ConnectionResetError):
                    silent_closed = "eof"
        assert answered >= 2, f"only {answered} pings in ~15 intervals"
        assert silent_pings >= 1, "the server sent the silent client no WebSocket ping"
        assert silent_closed, f"silent client still open after ~15 intervals and {silent_pings} unanswered pings"
        # the answering client is still served
        answering.send_frame(OP_TEXT, b'{"type": "ping"}')
        while True:
            op, payload = answering.recv_frame()
            if op == OP_PING:
                answering.send_frame(OP_PONG, payload)
                continue
            assert op == OP_TEXT and json.loads(payload) == {"type": "pong"}, (op, payload)
            break


