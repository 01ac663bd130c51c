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


# Deepest nesting accepted from a client or publisher. Far beyond any real command or
# event, far below the interpreter's recursion limit: whatever we accept we can also
# serialise again (an echoed channel, a published event) without a RecursionError.
MAX_JSON_DEPTH = 64


def loads(text):
    """JSON from a client frame or an API body. ValueError for anything that is not
    JSON, including more than MAX_JSON_DEPTH nested arrays/objects (json.loads itself raises
    RecursionError a little under 1000 levels, which is not a ValueError)."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    stack = [(obj, 1)]            # (value, how many arrays/objects it sits in, itself included)
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise ValueError("JSON nested too deeply")
        stack.extend((child, depth + 1) for child in children)
    return obj


def json_frame(obj) -> bytes:
    return _frame(OP_TEXT, dumps(obj))


def ping_frame(payload: bytes = b"") -> bytes:
    return _frame(OP_PING, payload)


def pong_frame(payload: bytes = b"") -> bytes:
    return _frame(OP_PONG, payload[:125])


def close_frame(code: int, reason: str = "") -> bytes:
    body = struct.pack("!H", code) + reason.encode()[:123]
    return _frame(OP_CLOSE, body)
