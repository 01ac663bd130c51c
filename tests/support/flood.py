"""One client flooding the server with one frame, over and over, as fast as it can write.

It reads everything the server sends back (a flooder that stopped reading would be closed
4009 as a slow reader: another limit than the one being tested) and notes the server's
close code. Used by tests/test_limits.py (who gets served during a flood, by ordering)
and bench/abuse_flood.py (how long a bystander waits). Bounded in time and bytes; talks
to 127.0.0.1 only.
"""
from __future__ import annotations

import socket
import threading
import time

from .rawws import OP_CLOSE, OP_TEXT, RawWebSocket, masked_frame

CHUNK_BYTES = 65536
UNDERWAY_BYTES = 1 << 20       # the server is reading it (a flood of pongs gets no answer)


class Flood:
    def __init__(self, host: str, port: int, path: str, frame: bytes, *, seconds: float,
                 max_bytes: int = 2 << 30):
        self.raw = RawWebSocket(host, port, path)
        # the welcome; anything after it is an answer to the flood
        self.raw.recv_json_until("connected")
        self.chunk = frame * max(1, CHUNK_BYTES // len(frame))
        self.seconds, self.max_bytes = seconds, max_bytes
        self.sent = 0
        self.replies = 0                      # frames the server sent back (close frame excluded)
        self.rate_limited = 0                 # of them, text frames naming rate_limited
        self.close_code: int | None = None
        self.answered = threading.Event()     # the server answered part of the flood
        # the server answered, or UNDERWAY_BYTES were written
        self.underway = threading.Event()
        self.stopped = threading.Event()      # the writer stopped (deadline, byte cap or socket error)
        self.ended = threading.Event()        # the reader saw the server's end (EOF)
        self._threads = [threading.Thread(target=self._write, daemon=True),
                         threading.Thread(target=self._read, daemon=True)]

    @classmethod
    def of(cls, srv, token: str, opcode: int, payload: bytes, **kw) -> "Flood":
        return cls(srv.host, srv.port, f"/ws?token={token}", masked_frame(opcode, payload), **kw)

    def start(self) -> "Flood":
        for t in self._threads:
            t.start()
        return self

    @property
    def flooding(self) -> bool:
        return not self.stopped.is_set()

    def _write(self):
        sock, chunk = self.raw.sock, self.chunk
        deadline = time.monotonic() + self.seconds
        try:
            sock.settimeout(1.0)
            while (time.monotonic() < deadline and self.sent < self.max_bytes
                   and self.close_code is None and not self.ended.is_set()):
                try:
                    sock.sendall(chunk)
                except socket.timeout:
                    continue                  # the server is not reading just now: try again
                self.sent += len(chunk)
                if self.sent >= UNDERWAY_BYTES:
                    self.underway.set()
            self.stopped.set()
            if self.close_code is not None:   # answer the server's close, as a client should
                sock.sendall(masked_frame(OP_CLOSE, self.close_code.to_bytes(2, "big")))
        except OSError:
            pass                              # the server closed the connection
        finally:
            self.stopped.set()

    def _read(self):
        """Server frames are unmasked: header, payload. Parsed in place, counting."""
        sock = self.raw.sock
        buf = bytearray(self.raw.buf)
        deadline = time.monotonic() + self.seconds + 30
        try:
            sock.settimeout(1.0)
            while time.monotonic() < deadline:
                pos = 0
                while len(buf) - pos >= 2:
                    b0, b1 = buf[pos], buf[pos + 1]
                    n, head = b1 & 0x7F, 2
                    if n == 126:
                        if len(buf) - pos < 4:
                            break
                        n, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
                    elif n == 127:
                        if len(buf) - pos < 10:
                            break
                        n, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
                    if len(buf) - pos < head + n:
                        break
                    opcode = b0 & 0x0F
                    payload = buf[pos + head:pos + head + n]
                    pos += head + n
                    if opcode == OP_CLOSE:
                        if self.close_code is None and n >= 2:
                            self.close_code = int.from_bytes(payload[:2], "big")
                        continue
                    self.replies += 1
                    if opcode == OP_TEXT and b"rate_limited" in payload:
                        self.rate_limited += 1
                    self.answered.set()
                    self.underway.set()
                del buf[:pos]
                try:
                    data = sock.recv(1 << 20)
                except socket.timeout:
                    continue
                if not data:
                    return
                buf += data
        except OSError:
            return
        finally:
            self.ended.set()

    def wait(self, timeout: float) -> bool:
        """Until the server ended the connection; False if it did not within `timeout`."""
        return self.ended.wait(timeout)

    def close(self):
        self.stopped.wait(self.seconds + 5)
        self.raw.close()
        for t in self._threads:
            t.join(5)
