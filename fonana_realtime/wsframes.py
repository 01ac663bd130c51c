"""Server → client WebSocket frames, built once as bytes.

Server frames are never masked, so one pre-built frame can be written to every
recipient of an event. RSV1 is always clear: such a frame is valid, uncompressed,
even on a connection that negotiated permessage-deflate (RFC 7692 §6).
"""
from __future__ import annotations

import json
import math
import re
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
    """JSON as the old server sent it (compact, UTF-8), and standard JSON only (RFC 8259):
    NaN and Infinity, which Python writes by default and a browser's JSON.parse rejects,
    raise ValueError, and so does a lone surrogate (UnicodeEncodeError is a ValueError)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# Deepest nesting accepted from a client or publisher. Far beyond any real command or
# event, far below the interpreter's recursion limit: whatever we accept we can also
# serialise again (an echoed channel, a published event) without a RecursionError.
MAX_JSON_DEPTH = 64
# A lone surrogate can only arrive as a \uD800-\uDFFF escape (UTF-8 cannot carry one);
# only text holding such an escape has its strings checked.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE_ESCAPE_BYTES = re.compile(_SURROGATE_ESCAPE.pattern.encode())
# An integer beyond the double range: JavaScript reads it as Infinity, like 1e400.
MAX_INT_BITS = 1024


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate (\\ud800-\\udfff without its pair)") from None


def loads(text):
    """JSON from a client frame, an API body or a broker message: standard JSON only.
    ValueError for anything else: not JSON, NaN/Infinity/-Infinity, a number out of the
    double range (1e400), a string with a lone surrogate (it cannot be written back as
    UTF-8), or more than MAX_JSON_DEPTH nested arrays/objects (json.loads itself raises
    RecursionError a little under 1000 levels, which is not a ValueError)."""
    try:
        # numbers are checked in the walk below, not by parse_float/parse_int hooks: those
        # would call back into Python for every number instead of using the C fast path
        obj = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    pattern = _SURROGATE_ESCAPE_BYTES if isinstance(text, (bytes, bytearray)) else _SURROGATE_ESCAPE
    check_text = pattern.search(text) is not None
    stack = [(obj, 1)]            # (value, how many arrays/objects it sits in, itself included)
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
            if check_text:
                for key in value:
                    _encodable(key)
        elif isinstance(value, list):
            children = value
        else:
            kind = type(value)
            if kind is float:
                if not math.isfinite(value):          # 1e400 parses to inf
                    raise ValueError("a number is out of the double range")
            elif kind is int:
                if value.bit_length() > MAX_INT_BITS:
                    raise ValueError("a number is out of the double range")
            elif check_text and kind is str:
                _encodable(value)
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
