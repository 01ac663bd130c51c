"""Channels: parse and validate a channel object, give its key, say who may subscribe.

PROTOCOL.md 2.3 (compat):  notifications_U, feed_U (only U), creator_C (anyone),
post_P (author, open post, completed purchase or active subscription).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

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


def may_subscribe(channel: Channel, user_id: str, store) -> bool:
    """Whether `user_id` may hold `channel`. Post channels ask the database
    (store.StoreUnavailable propagates so the caller can answer `unavailable`)."""
    if channel.kind in ("notifications", "feed"):
        return channel.id == user_id
    if channel.kind == "creator":
        return True
    return store.can_view_post(user_id, channel.id)
