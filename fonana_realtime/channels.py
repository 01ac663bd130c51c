"""Channels: parse and validate a channel object, give its key, say who may subscribe.

PROTOCOL.md 2.3 (compat):  notifications_U, feed_U (only U), creator_C (anyone),
post_P (author, open post, completed purchase or active subscription: the last only
until its validUntil).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timezone

from .store import LASTING

_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

# channel type -> the field of the channel object that holds its id
ID_FIELDS = {"notifications": "userId", "feed": "userId", "creator": "id", "post": "postId"}


class InvalidChannel(ValueError):
    """Not a channel object we know, or an id outside [A-Za-z0-9_-]{1,128}."""


@dataclass(frozen=True, slots=True)
class Channel:
    kind: str
    id: str

    @property
    def key(self) -> str:
        return f"{self.kind}_{self.id}"


def valid_id(value) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def parse_channel(obj) -> Channel:
    """A channel object (`{"type":"post","postId":"p1"}`) → Channel."""
    if not isinstance(obj, dict):
        raise InvalidChannel("channel must be an object")
    kind = obj.get("type")
    field = ID_FIELDS.get(kind) if isinstance(kind, str) else None
    if field is None:
        raise InvalidChannel("unknown channel type")
    value = obj.get(field)
    if not valid_id(value):
        raise InvalidChannel(f"channel {field} must match [A-Za-z0-9_-]{{1,128}}")
    return Channel(kind, value)


def parse_channel_key(key) -> Channel:
    """A key string (`"post_p1"`), as the HTTP API also accepts → Channel."""
    if not isinstance(key, str):
        raise InvalidChannel("channel key must be a string")
    kind, sep, ident = key.partition("_")
    if not sep or kind not in ID_FIELDS or not valid_id(ident):
        raise InvalidChannel("unknown channel key")
    return Channel(kind, ident)


def parse_channel_any(value) -> Channel:
    return parse_channel_key(value) if isinstance(value, str) else parse_channel(value)


def access_until(channel: Channel, user_id: str, store) -> float | None:
    """Until when (Unix seconds) `user_id` may hold `channel`: None if not at all,
    math.inf for access that does not lapse; a post held through a subscription only
    until its `validUntil` (access_expiry.py checks again then). Post channels ask the
    database (store.StoreUnavailable propagates so the caller can answer `unavailable`)."""
    if channel.kind in ("notifications", "feed"):
        return math.inf if channel.id == user_id else None
    if channel.kind == "creator":
        return math.inf
    until = store.post_access_until(user_id, channel.id)
    if until is None:
        return None
    if until == LASTING:
        return math.inf
    return until.replace(tzinfo=timezone.utc).timestamp()      # naive UTC from the database
