"""The event catalogue: each event type, the fields it must carry, where it goes.

PROTOCOL.md section 3 (compat). An event is published flat, exactly as given; the
catalogue only checks it and, when the publisher gave no address, routes it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .channels import Channel, InvalidChannel, valid_id


class InvalidEvent(ValueError):
    """The event is not an object, lacks a field its type needs, or cannot be routed."""


@dataclass(frozen=True)
class Route:
    """Where one event goes: channel keys and user ids (the union, once per connection)."""
    channels: tuple[str, ...] = ()
    users: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.channels or self.users)


def _user(field_name):
    return lambda e: Route(users=(e[field_name],))


def _channel(kind, field_name):
    return lambda e: Route(channels=(Channel(kind, e[field_name]).key,))


@dataclass(frozen=True)
class EventType:
    required: tuple[str, ...]
    id_fields: tuple[str, ...] = ()     # required fields that are ids used in routing
    route: object = None                # event -> Route, or None: must be addressed


CATALOGUE: dict[str, EventType] = {
    "notification": EventType(("userId", "notification"), ("userId",), _user("userId")),
    "notification_read": EventType(("userId", "notificationId"), ("userId",), _user("userId")),
    "notifications_cleared": EventType(("userId",), ("userId",), _user("userId")),
    "post_liked": EventType(("postId", "userId", "likesCount"), ("postId",), _channel("post", "postId")),
    "post_unliked": EventType(("postId", "userId", "likesCount"), ("postId",), _channel("post", "postId")),
    "post_created": EventType(("post", "userId", "timestamp"), ("userId",), _channel("feed", "userId")),
    "new_post_from_subscription": EventType(("post",)),
    "post_deleted": EventType(("postId",), ("postId",), _channel("post", "postId")),
    "comment_added": EventType(("postId", "comment"), ("postId",), _channel("post", "postId")),
    "comment_deleted": EventType(("postId", "commentId"), ("postId",), _channel("post", "postId")),
    "creator_updated": EventType(("creatorId", "data"), ("creatorId",), _channel("creator", "creatorId")),
    "new_subscription": EventType(("creatorId", "userId"), ("creatorId",), _channel("creator", "creatorId")),
    "feed_update": EventType(("userId", "posts"), ("userId",), _user("userId")),
    # The Fonana web app listens for these six already (CreatorContext, useRealtimePosts).
    "subscription_cancelled": EventType(("creatorId", "userId"), ("creatorId",),
                                        _channel("creator", "creatorId")),
    "earnings_updated": EventType(("creatorId", "earnings"), ("creatorId",), _channel("creator", "creatorId")),
    "flash_sale_created": EventType(("creatorId", "flashSale"), ("creatorId",), _channel("creator", "creatorId")),
    "flash_sale_ended": EventType(("creatorId", "flashSaleId"), ("creatorId",), _channel("creator", "creatorId")),
    "post_purchased": EventType(("postId", "userId"), ("userId",), _user("userId")),              # userId: the buyer
    "subscription_updated": EventType(("creatorId", "userId", "tier"), ("userId",), _user("userId")),  # the subscriber
}


def check_event(event) -> EventType | None:
    """Validate one event against the catalogue; return its type entry.

    A type outside the catalogue is allowed (None is returned) so services can push
    their own events, but only with an explicit address: it has no route.
    """
    if not isinstance(event, dict):
        raise InvalidEvent("event must be a JSON object")
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidEvent("event.type must be a non-empty string")
    entry = CATALOGUE.get(kind)
    if entry is None:
        return None
    missing = [f for f in entry.required if f not in event]
    if missing:
        raise InvalidEvent(f"{kind} needs field(s): {', '.join(missing)}")
    for f in entry.id_fields:
        if not valid_id(event[f]):
            raise InvalidEvent(f"{kind}.{f} must be an id matching [A-Za-z0-9_-]{{1,128}}")
    return entry


def route_event(event, channels: tuple[str, ...] = (), users: tuple[str, ...] = ()) -> Route:
    """Check the event; the explicit address if one was given, else its catalogue route."""
    entry = check_event(event)
    if channels or users:
        return Route(tuple(channels), tuple(users))
    if entry is None or entry.route is None:
        raise InvalidEvent(f"{event['type']} has no default route: address it with channel or userId")
    return entry.route(event)


__all__ = ["CATALOGUE", "InvalidEvent", "InvalidChannel", "Route", "check_event", "route_event"]
