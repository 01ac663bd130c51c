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


# What a catalogue field must hold (PROTOCOL.md 8: "catalogue types are checked").
ID = "id"             # a string matching [A-Za-z0-9_-]{1,128} (every id of the schema is a cuid)
ID_OR_NULL = "id?"    # an id or null: the app's updatePostLikes(postId, likesCount, userId?) may leave the liker out
COUNT = "count"       # an integer >= 0, not a boolean
TEXT = "text"         # a non-empty string
OBJECT = "object"     # a JSON object
LIST = "list"         # a JSON array
ANY = "any"           # any value (a shape the app decides: `earnings`)

_KINDS = {
    ID: (valid_id, "an id matching [A-Za-z0-9_-]{1,128}"),
    ID_OR_NULL: (lambda v: v is None or valid_id(v), "null or an id matching [A-Za-z0-9_-]{1,128}"),
    COUNT: (lambda v: type(v) is int and v >= 0, "an integer >= 0"),
    TEXT: (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    OBJECT: (lambda v: isinstance(v, dict), "a JSON object"),
    LIST: (lambda v: isinstance(v, list), "a JSON array"),
    ANY: (lambda v: True, "present"),
}

# The types of the server's own frames (PROTOCOL.md 2.2, 7). An event may not take one:
# a client could not tell a published `connected`, `error` or `pong` from the server's.
SERVER_FRAME_TYPES = frozenset({"connected", "subscribed", "unsubscribed", "pong", "authenticated", "error",
                                "unread_notifications", "recovered", "event"})


@dataclass(frozen=True)
class EventType:
    fields: dict                        # each required field -> its kind (ID, COUNT, ...)
    id_fields: tuple[str, ...] = ()     # required fields that are ids used in routing
    route: object = None                # event -> Route, or None: must be addressed

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(self.fields)


CATALOGUE: dict[str, EventType] = {
    "notification": EventType({"userId": ID, "notification": OBJECT}, ("userId",), _user("userId")),
    "notification_read": EventType({"userId": ID, "notificationId": ID}, ("userId",), _user("userId")),
    "notifications_cleared": EventType({"userId": ID}, ("userId",), _user("userId")),
    "post_liked": EventType({"postId": ID, "userId": ID_OR_NULL, "likesCount": COUNT}, ("postId",),
                            _channel("post", "postId")),
    "post_unliked": EventType({"postId": ID, "userId": ID_OR_NULL, "likesCount": COUNT}, ("postId",),
                              _channel("post", "postId")),
    "post_created": EventType({"post": OBJECT, "userId": ID, "timestamp": TEXT}, ("userId",),
                              _channel("feed", "userId")),
    "new_post_from_subscription": EventType({"post": OBJECT}),
    "post_deleted": EventType({"postId": ID}, ("postId",), _channel("post", "postId")),
    "comment_added": EventType({"postId": ID, "comment": OBJECT}, ("postId",), _channel("post", "postId")),
    "comment_deleted": EventType({"postId": ID, "commentId": ID}, ("postId",), _channel("post", "postId")),
    "creator_updated": EventType({"creatorId": ID, "data": OBJECT}, ("creatorId",),
                                 _channel("creator", "creatorId")),
    "new_subscription": EventType({"creatorId": ID, "userId": ID}, ("creatorId",),
                                  _channel("creator", "creatorId")),
    "feed_update": EventType({"userId": ID, "posts": LIST}, ("userId",), _user("userId")),
    # The Fonana web app listens for these six already (CreatorContext, useRealtimePosts).
    "subscription_cancelled": EventType({"creatorId": ID, "userId": ID}, ("creatorId",),
                                        _channel("creator", "creatorId")),
    "earnings_updated": EventType({"creatorId": ID, "earnings": ANY}, ("creatorId",),
                                  _channel("creator", "creatorId")),
    "flash_sale_created": EventType({"creatorId": ID, "flashSale": OBJECT}, ("creatorId",),
                                    _channel("creator", "creatorId")),
    "flash_sale_ended": EventType({"creatorId": ID, "flashSaleId": ID}, ("creatorId",),
                                  _channel("creator", "creatorId")),
    "post_purchased": EventType({"postId": ID, "userId": ID}, ("userId",), _user("userId")),    # userId: the buyer
    "subscription_updated": EventType({"creatorId": ID, "userId": ID, "tier": TEXT}, ("userId",),
                                      _user("userId")),                                         # the subscriber
}


def check_event(event) -> EventType | None:
    """Validate one event against the catalogue; return its type entry.

    A type outside the catalogue is allowed (None is returned) so services can push
    their own events, but only with an explicit address: it has no route. A server
    frame's type is refused.
    """
    if not isinstance(event, dict):
        raise InvalidEvent("event must be a JSON object")
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidEvent("event.type must be a non-empty string")
    if kind in SERVER_FRAME_TYPES:
        raise InvalidEvent(f"event.type {kind!r} is the type of a server frame: clients could not tell it "
                           "from the server's own")
    entry = CATALOGUE.get(kind)
    if entry is None:
        return None
    missing = [f for f in entry.fields if f not in event]
    if missing:
        raise InvalidEvent(f"{kind} needs field(s): {', '.join(missing)}")
    for f, field_kind in entry.fields.items():
        valid, what = _KINDS[field_kind]
        if not valid(event[f]):
            raise InvalidEvent(f"{kind}.{f} must be {what}")
    return entry


def route_event(event, channels: tuple[str, ...] = (), users: tuple[str, ...] = ()) -> Route:
    """Check the event; the explicit address if one was given, else its catalogue route."""
    entry = check_event(event)
    if channels or users:
        return Route(tuple(channels), tuple(users))
    if entry is None or entry.route is None:
        raise InvalidEvent(f"{event['type']} has no default route: address it with channel or userId")
    return entry.route(event)


__all__ = ["CATALOGUE", "SERVER_FRAME_TYPES", "InvalidEvent", "InvalidChannel", "Route", "check_event",
           "route_event"]
