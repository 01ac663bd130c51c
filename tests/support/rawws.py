"""A deliberately minimal WebSocket client on a plain socket.

It exists for what a well-behaved library will not do: never answer pings, send a text
frame that is not UTF-8, and watch control frames (pings) arrive. No extensions are offered,
so every server frame is plain.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class RawWebSocket:
    """`rcvbuf` sets the receive buffer before connecting (a small TCP window from the SYN
    on, so a client that stops reading fills up after little data); `headers` are added
    to the upgrade request."""

    def __init__(self, host: str, port: int, path: str, *, timeout: float = 10.0,
                 rcvbuf: int | None = None, headers: dict | None = None):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((host, port))
        self.sock = sock
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        self.sock.sendall(request.encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"connection closed during the handshake: {self.buf!r}")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.status_line, _, header_lines = head.decode("latin-1").partition("\r\n")
        self.headers = {}                 # the 101's headers, names lower-cased
        for line in header_lines.split("\r\n"):
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if " 101 " not in self.status_line + " ":
            raise ConnectionError(f"handshake refused: {head!r}")

    def send_json(self, obj) -> None:
        self.send_frame(OP_TEXT, json.dumps(obj).encode())

    def recv_json_until(self, type_: str, timeout: float = 5.0) -> dict:
        """Read text frames until one of `type_` arrives (control frames are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            op, payload = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if op == OP_TEXT:
                frame = json.loads(payload)
                if frame.get("type") == type_:
                    return frame
            elif op == OP_CLOSE:
                raise AssertionError(f"closed while waiting for {type_!r}: {payload!r}")

    def close_code(self, timeout: float = 5.0) -> int | None:
        """Read until the server's close frame; its code (None on EOF or a bare close)."""
        while True:
            try:
                op, payload = self.recv_frame(timeout)
            except EOFError:
                return None
            if op == OP_CLOSE:
                return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame. Raises TimeoutError or EOFError."""
        deadline = time.monotonic() + timeout
        b0, b1 = self._read_exact(2, deadline)
        opcode = b0 & 0x0F
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2, deadline))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8, deadline))
        mask = self._read_exact(4, deadline) if b1 & 0x80 else None
        payload = self._read_exact(length, deadline)
        if mask:
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        return opcode, payload

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        self.sock.sendall(masked_frame(opcode, payload, fin=fin))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One client frame (masked, as RFC 6455 requires of a client); `fin=False` makes it
    a fragment of a message that goes on (opcode OP_CONT for every fragment after the first)."""
    mask = os.urandom(4)
    header = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        header += bytes([0x80 | n])
    elif n < 65536:
        header += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return header + mask + masked
