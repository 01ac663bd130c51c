"""Server → client WebSocket frames, built once as bytes.

Server frames are never masked, so one pre-built frame can be written to every
recipient of an event. RSV1 is always clear: such a frame is valid, uncompressed,
even on a connection that negotiated permessage-deflate (RFC 7692 §6).
"""
from __future__ import annotations

import json
import struct

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    first = 0x80 | opcode                     # FIN + opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def text_frame(payload: bytes) -> bytes:
    return _frame(OP_TEXT, payload)


def dumps(obj) -> bytes:
    """JSON as the old server sent it (compact, UTF-8)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def json_frame(obj) -> bytes:
    return _frame(OP_TEXT, dumps(obj))


def ping_frame(payload: bytes = b"") -> bytes:
    return _frame(OP_PING, payload)


def pong_frame(payload: bytes = b"") -> bytes:
    return _frame(OP_PONG, payload[:125])


def close_frame(code: int, reason: str = "") -> bytes:
    body = struct.pack("!H", code) + reason.encode()[:123]
    return _frame(OP_CLOSE, body)
