"""Writer.cork: the writes one read of the client's frames brings about leave as one
send, in order (pure logic over a real gevent socket pair; no server)."""
from __future__ import annotations

import time
from types import SimpleNamespace

import gevent
import gevent.socket
import pytest

from fonana_realtime.connection import Connection
from fonana_realtime.writer import CORK_MAX_BYTES
from fonana_realtime.wsframes import text_frame


class CountingSocket:
    """The server end of the pair, counting the sends that reach it."""

    def __init__(self, sock):
        self.sock, self.sends = sock, 0

    def send(self, data, flags=0, timeout=None):
        self.sends += 1
        return self.sock.send(data, flags, timeout)

    def __getattr__(self, name):
        return getattr(self.sock, name)


@pytest.fixture
def conn_and_peer():
    server_end, client_end = gevent.socket.socketpair()
    limits = SimpleNamespace(ping_interval=25.0, rate_burst=40, send_backlog_bytes=1 << 20,
                             send_backlog_frames=1000, jwt_leeway_seconds=10)
    sock = CountingSocket(server_end)
    conn = Connection(sock, None, "u-cork", time.time() + 3600, "127.0.0.1", limits)
    yield conn, sock, client_end
    server_end.close()
    client_end.close()


def _read_all(peer, n: int) -> bytes:
    data = b""
    while len(data) < n:
        data += peer.recv(n - len(data))
    return data


def test_corked_writes_leave_as_one_send_in_their_order(conn_and_peer):
    conn, sock, peer = conn_and_peer
    conn.writer.head = b"HEAD"
    frames = [text_frame(f"frame {i}".encode()) for i in range(3)]
    conn.writer.cork()
    for frame in frames:
        assert conn.send(frame)
    assert sock.sends == 0
    conn.writer.uncork()
    assert sock.sends == 1
    expected = b"HEAD" + b"".join(frames)
    assert _read_all(peer, len(expected)) == expected
    conn.send(frames[0])                  # uncorked: written at once again
    assert sock.sends == 2


def test_held_bytes_past_the_bound_go_out_without_waiting(conn_and_peer):
    conn, sock, peer = conn_and_peer
    big = text_frame(b"x" * (CORK_MAX_BYTES // 2 + 1))
    conn.writer.cork()
    conn.send(big)
    assert sock.sends == 0
    conn.send(big)                        # past CORK_MAX_BYTES: both go now
    assert sock.sends == 1
    conn.send(b"tail")
    conn.writer.uncork()
    assert sock.sends == 2
    assert _read_all(peer, 2 * len(big) + 4) == big + big + b"tail"


def test_an_aborted_connection_drops_what_it_held(conn_and_peer):
    conn, sock, peer = conn_and_peer
    conn.writer.cork()
    conn.send(text_frame(b"never"))
    conn.abort()
    conn.writer.uncork()
    assert sock.sends == 0 and conn.writer.corked is None


def test_a_write_from_another_greenlet_is_not_held_and_follows_the_held_replies(conn_and_peer):
    conn, sock, peer = conn_and_peer
    reply, event, later = text_frame(b"subscribed"), text_frame(b"an event"), text_frame(b"unread")
    conn.writer.cork()
    conn.send(reply)
    gevent.spawn(conn.send, event).join()        # fanout or the pacer, in its own greenlet
    assert sock.sends == 1                       # the held reply, then the event, at once
    assert _read_all(peer, len(reply) + len(event)) == reply + event
    conn.send(later)
    conn.writer.uncork()
    assert _read_all(peer, len(later)) == later


class BrokenDrainSocket(CountingSocket):
    """A socket whose kernel buffer is full (non-blocking sends take nothing) and whose
    blocking `sendall` fails with something that is not an OSError: a bug in the drain."""

    def send(self, data, flags=0, timeout=None):
        self.sends += 1
        raise BlockingIOError

    def sendall(self, data):
        raise RuntimeError("a bug while draining the backlog")


def test_a_bug_while_draining_the_backlog_cuts_the_connection_instead_of_silencing_it(conn_and_peer):
    """Issue 17: a drain that died leaving its backlog behind would park every later write
    (events, pings) with nobody to write them: the client hears nothing more and is not
    told. The connection is cut instead, so the client reconnects (and a legacy one resumes)."""
    conn, sock, peer = conn_and_peer
    conn.sock = conn.writer.sock = BrokenDrainSocket(sock.sock)
    assert conn.send(text_frame(b"parked"))       # the kernel took nothing: parked, drain started
    drain = conn.writer.greenlet
    assert drain is not None
    drain.join(5)
    assert conn.closed, "the drain died and left the connection open with a backlog nobody writes"
    assert conn.writer.backlog is None
    assert not conn.send(text_frame(b"later"))   # nothing more is taken for a socket that is gone
