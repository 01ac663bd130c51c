"""The notification ROW format, UTC timestamps and cuid-style ids.

Both stores build notification ROWs here so the wire format is identical
whichever database is behind them:

    {"id", "userId", "type", "title", "message", "isRead", "metadata", "createdAt"}

``metadata`` is the parsed JSON value (or None); ``createdAt`` is ISO-8601 UTC
with milliseconds and ``Z`` (``2025-07-01T12:00:00.000Z``), as the Fonana
client parses it.

The Fonana columns are ``TIMESTAMP(3)`` *without* time zone holding UTC, so
every "now" is computed here in Python (naive UTC, millisecond precision) and
passed to the database as a parameter; the session time zone never matters.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import time
from datetime import datetime, timezone
from typing import Any

ROW_KEYS = ("id", "userId", "type", "title", "message", "isRead", "metadata", "createdAt")

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_counter = itertools.count(secrets.randbelow(36**4))  # next() is atomic under the GIL


def _base36(n: int, width: int) -> str:
    """``n`` in lowercase base36, left-padded and cut to the last ``width`` digits."""
    digits = []
    for _ in range(width):
        n, r = divmod(n, 36)
        digits.append(_BASE36[r])
    return "".join(reversed(digits))


def new_id() -> str:
    """A 25-character cuid-style id: ``c`` + time(8) + counter(4) + pid(2) + random(10).

    Same shape as the ids Prisma's ``cuid()`` makes for the rest of Fonana, so
    rows we insert look like every other row. The counter makes ids made in
    the same millisecond by this process distinct and the random tail (from
    ``secrets``) makes ids from different processes/hosts distinct.
    """
    return (
        "c"
        + _base36(int(time.time() * 1000), 8)
        + _base36(next(_counter), 4)
        + _base36(os.getpid(), 2)
        + _base36(secrets.randbelow(36**10), 10)
    )


def utc_now() -> datetime:
    """Naive UTC now, truncated to milliseconds (what a TIMESTAMP(3) column holds)."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_naive_utc(value: datetime | str) -> datetime:
    """A datetime (naive = already UTC, aware = converted) or a stored timestamp string, as naive UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def iso_ms(value: datetime | str) -> str:
    """``2025-07-01T12:00:00.000Z`` from a naive-UTC datetime or a stored timestamp string."""
    dt = as_naive_utc(value)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def sqlite_ts(value: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS.fff`` UTC: the fixed-width TEXT form SQLite stores, so string order is time order."""
    dt = as_naive_utc(value)
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{dt.microsecond // 1000:03d}"


def load_metadata(text: str | bytes | None) -> Any:
    """Metadata JSON text from the database as a Python value; NULL stays None."""
    return None if text is None else json.loads(text)


def notification_row(
    id: str,
    user_id: str,
    type: str,
    title: str,
    message: str,
    is_read: Any,
    metadata: Any,
    created_at: datetime | str,
) -> dict:
    """One notification ROW in the wire format. ``metadata`` is already-parsed JSON (see ``load_metadata``)."""
    return {
        "id": id,
        "userId": user_id,
        "type": str(type),
        "title": title,
        "message": message,
        "isRead": bool(is_read),
        "metadata": metadata,
        "createdAt": iso_ms(created_at),
    }


_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def is_key(value: Any) -> bool:
    """Whether ``value`` can be looked up at all: a str both databases can hold (no NUL, valid UTF-8).

    Anything else cannot match a row, so lookups answer "not found" instead of
    letting a driver encoding error escape.
    """
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def check_text(name: str, value: Any) -> str:
    """``value`` if it is a storable str, else ValueError naming the field."""
    if not is_key(value):
        raise ValueError(f"{name} must be a string without NUL characters or lone surrogates")
    return value


def dump_metadata(metadata: Any) -> str | None:
    """Metadata as JSON text for the database; None stays SQL NULL.

    ValueError if it is not JSON-serialisable or holds text PostgreSQL's JSONB
    refuses (NUL, lone surrogates), so both stores accept exactly the same values.
    """
    if metadata is None:
        return None
    try:
        text = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise ValueError(f"metadata is not storable JSON: {exc}") from None
    if _JSON_NUL.search(text):
        raise ValueError("metadata must not contain NUL characters")
    return text
