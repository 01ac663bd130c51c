"""What a slow client is sent when its backlog overflows (issue 8.4; PROTOCOL.md 2.5).

`Connection` on its own over a real socket pair (gevent sockets, no server): the far end
stops reading, the backlog overflows, and then

- every frame that was never started is dropped at once (the backlog keeps only the frame
  in flight and the close frame),
- when the far end reads again it gets complete frames, then the 4009 close frame,
- a far end that never reads is cut at the close deadline (the heartbeat's sweep).

tests/test_slow_client.py shows the same through a real server and a raw client.
"""
from __future__ import annotations

import socket
import struct
import time
from types import SimpleNamespace

import gevent
import gevent.socket
import pytest

from fonana_realtime import close_codes, heartbeat
from fonana_realtime.connection import CLOSE_GRACE_SECONDS, Connection
from fonana_realtime.wsframes import OP_CLOSE, OP_TEXT, text_frame

BACKLOG_BYTES = 64 * 1024
PAYLOAD = b"x" * 1000
MAX_SENDS = 10_000          # bounds the filling loop whatever happens


def _limits(**kw):
    values = dict(ping_interval=25.0, rate_burst=40, send_backlog_bytes=BACKLOG_BYTES,
                  send_backlog_frames=10**6, jwt_leeway_seconds=10)
    values.update(kw)
    return SimpleNamespace(**values)


@pytest.fixture
def pair():
    server_end, client_end = gevent.socket.socketpair()
    for s, opt in ((server_end, socket.SO_SNDBUF), (client_end, socket.SO_RCVBUF)):
        s.setsockopt(socket.SOL_SOCKET, opt, 4096)
    yield server_end, client_end
    server_end.close()
    client_end.close()


def _overflowed_connection(server_end, **limits) -> tuple[Connection, int]:
    """A connection whose peer has not read: frames sent until one is refused."""
    conn = Connection(server_end, None, "u-slow", time.time() + 3600, "127.0.0.1", _limits(**limits))
    frame = text_frame(PAYLOAD)
    for n in range(MAX_SENDS):
        if not conn.send(frame):       # no yield in between: the writer greenlet has not run
            return conn, n
    raise AssertionError(f"no overflow after {MAX_SENDS} frames")


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse server frames (unmasked) from a byte stream; a cut-off tail is an error."""
    out, i = [], 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            (n,), i = struct.unpack("!H", data[i:i + 2]), i + 2
        elif n == 127:
            (n,), i = struct.unpack("!Q", data[i:i + 8]), i + 8
        assert i + n <= len(data), "a frame is torn"
        out.append((b0 & 0x0F, data[i:i + n]))
        i += n
    return out


def _read_until_close(client_end, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        client_end.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = client_end.recv(65536)    # yields to the hub: the writer greenlet runs
        if not chunk:
            return data
        data += chunk
        try:
            frames = _frames(data)
        except (AssertionError, IndexError, struct.error):
            continue                       # mid-frame: read on
        if frames and frames[-1][0] == OP_CLOSE:
            return data


def test_overflow_drops_every_frame_never_started_at_once(pair):
    server_end, _ = pair
    conn, accepted = _overflowed_connection(server_end)
    assert accepted * len(PAYLOAD) > BACKLOG_BYTES // 2
    assert conn.closing and not conn.closed
    # only the frame in flight (if the client holds part of it) and the close frame are kept
    assert len(conn.backlog) <= 2, len(conn.backlog)
    assert conn.backlog_bytes <= len(text_frame(PAYLOAD)), conn.backlog_bytes
    assert bytes(conn.backlog[-1][0])[:4] == bytes((0x88, 2 + len(close_codes.REASONS[4009]))) + \
        struct.pack("!H", close_codes.SLOW_CONSUMER)
    # and nothing more is taken
    assert not conn.send(text_frame(b"late"))


def test_a_slow_client_that_reads_again_finds_whole_frames_then_close_4009(pair):
    server_end, client_end = pair
    conn, accepted = _overflowed_connection(server_end)
    frames = _frames(_read_until_close(client_end))
    texts = [p for op, p in frames if op == OP_TEXT]
    assert texts and all(p == PAYLOAD for p in texts), "a torn or foreign frame"
    assert len(texts) <= accepted
    op, payload = frames[-1]
    assert op == OP_CLOSE and struct.unpack("!H", payload[:2])[0] == close_codes.SLOW_CONSUMER
    assert payload[2:].decode() == close_codes.REASONS[close_codes.SLOW_CONSUMER]
    assert [op for op, _ in frames].count(OP_CLOSE) == 1
    gevent.sleep(0)
    assert conn.backlog is None and conn.writer.greenlet is None     # all written, writer gone


def test_a_slow_client_that_never_reads_is_cut_at_the_close_deadline(pair):
    server_end, _ = pair
    conn, _ = _overflowed_connection(server_end)
    gevent.sleep(0)                         # the writer runs and blocks on the full buffer
    writer = conn.writer.greenlet
    assert not conn.closed and writer is not None and not writer.dead
    hub = SimpleNamespace(connections=[conn])
    heartbeat.sweep(hub, _limits(), time.monotonic(), time.time())
    assert not conn.closed, "cut before the deadline"
    assert conn.close_deadline <= time.monotonic() + CLOSE_GRACE_SECONDS
    heartbeat.sweep(hub, _limits(), conn.close_deadline + 0.01, time.time())
    assert conn.closed
    writer.join(timeout=5)                  # the blocked write fails once the socket is shut
    assert writer.dead and conn.writer.greenlet is None and conn.backlog is None
