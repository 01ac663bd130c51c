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


# json.dumps with arguments builds an encoder per call (~0.85 of its 3 µs for a welcome
# frame); this one is made once and encodes exactly as json.dumps(obj, **the same) does.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(obj) -> bytes:
    """JSON as the old server sent it (compact, UTF-8), and standard JSON only (RFC 8259):
    NaN and Infinity, which Python writes by default and a browser's JSON.parse rejects,
    raise ValueError, and so does a lone surrogate (UnicodeEncodeError is a ValueError)."""
    return _ENCODER.encode(obj).encode()


# Deepest nesting accepted from a client or publisher. Far beyond any real command or
# event, far below the interpreter's recursion limit: whatever we accept we can also
# serialise again (an echoed channel, a published event) without a RecursionError.
MAX_JSON_DEPTH = 64
WALK_WITHOUT_COUNTING = 4096      # characters
# A lone surrogate can only arrive as a \\uD800-\\uDFFF escape: bytes are decoded as strict
# UTF-8, which refuses encoded surrogates (json.loads itself would let them through with
# "surrogatepass"), and a str from a client frame was strict UTF-8 already. Only text
# holding such an escape has its strings checked (a search with a literal prefix: cheap).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    """Called by the C scanner for each float only (ints and strings keep the fast path)."""
    value = float(text)
    if not math.isfinite(value):          # 1e400 parses to inf, and Python writes it back as Infinity
        raise ValueError(f"number {text[:32]} is out of the double range")
    return value


def _unique_keys(pairs) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key[:64]!r} (which one counts is up to each reader)")
            seen.add(key)
    return obj


# One decoder, made once: json.loads with any keyword builds a new one per call (~2 us).
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)
# The API's: an object with a key twice is refused (RFC 8259 4: names SHOULD be unique;
# readers differ on which one wins, so a checked `postId` could be another's). Only API
# bodies pay for the Python hook per object; client commands and broker messages do not.
_DECODER_UNIQUE_KEYS = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float,
                                        object_pairs_hook=_unique_keys)


def _encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate (\\ud800-\\udfff without its pair)") from None


def loads(text, *, unique_keys: bool = False):
    """JSON from a client frame, an API body or a broker message: standard JSON only.
    ValueError for anything else: not JSON, not UTF-8, NaN/Infinity/-Infinity, a float out
    of the double range (1e400), a string with a lone surrogate (it cannot be written back
    as UTF-8), or more than MAX_JSON_DEPTH nested arrays/objects (json.loads itself raises
    RecursionError a little under 1000 levels, which is not a ValueError); with
    `unique_keys`, an object holding one key twice. Integers of any size are standard
    JSON and written back as they came."""
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8")          # UnicodeDecodeError is a ValueError
    try:
        obj = (_DECODER_UNIQUE_KEYS if unique_keys else _DECODER).decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    check_text = _SURROGATE_ESCAPE.search(text) is not None
    # More than MAX_JSON_DEPTH levels need more than MAX_JSON_DEPTH brackets: a command or
    # a Redis message usually has far fewer, and then decoding is the whole cost (measured,
    # busy machine, medians: a 63-byte command 7.2 -> 3.5 us, a 238-byte envelope 8.8 ->
    # 7.4 us against the walk-always version). A long text is walked without counting.
    if check_text or len(text) > WALK_WITHOUT_COUNTING or text.count("{") + text.count("[") > MAX_JSON_DEPTH:
        _walk(obj, check_text)
    return obj


def _walk(obj, check_text: bool) -> None:
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
            if check_text and type(value) is str:
                _encodable(value)
            continue
        if depth > MAX_JSON_DEPTH:
            raise ValueError("JSON nested too deeply")
        stack.extend((child, depth + 1) for child in children)


def json_frame(obj) -> bytes:
    return _frame(OP_TEXT, dumps(obj))


def ping_frame(payload: bytes = b"") -> bytes:
    return _frame(OP_PING, payload)


def pong_frame(payload: bytes = b"") -> bytes:
    return _frame(OP_PONG, payload[:125])


def close_frame(code: int, reason: str = "") -> bytes:
    body = struct.pack("!H", code) + reason.encode()[:123]
    return _frame(OP_CLOSE, body)
