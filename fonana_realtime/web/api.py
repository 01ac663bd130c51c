"""`/api/*`: the server-to-server API (PROTOCOL.md 4), behind WS_API_SECRET.

Every body is checked completely before anything is published or written, and
every refusal is a 4xx with a JSON reason.
"""
from __future__ import annotations

import hmac
import logging
from contextlib import contextmanager

from flask import Blueprint, jsonify, request

from .. import metrics
from ..broker import BrokerUnavailable
from ..channels import InvalidChannel, parse_channel_any, valid_id
from ..events import Route, route_event
from ..notification_push import NotFound
from ..store import StoreUnavailable, UnknownNotificationType
from ..wsframes import dumps, loads
from . import bearer_token, json_error, runtime

log = logging.getLogger("fonana_realtime.api")
bp = Blueprint("api", __name__, url_prefix="/api")


class PayloadTooLarge(Exception):
    """A body without Content-Length (chunked) that runs past API_MAX_BODY_BYTES."""


class BadRequest(Exception):
    def __init__(self, reason: str, **fields):
        super().__init__(reason)
        self.fields = {"reason": reason, **fields}


@bp.errorhandler(BadRequest)
def _bad_request(exc: BadRequest):
    return json_error(400, "bad_request", **exc.fields)


@bp.errorhandler(PayloadTooLarge)
def _too_large(exc):
    return json_error(413, "payload_too_large", limit=runtime().settings.api_max_body_bytes)


@bp.errorhandler(StoreUnavailable)
def _store_down(exc):
    return json_error(503, "unavailable", reason="database_unavailable")


@bp.errorhandler(BrokerUnavailable)
def _broker_down(exc):
    return json_error(503, "broker_unavailable")


def require_api_key(settings):
    """The bearer check shared by /api and the operator endpoints."""
    if not settings.api_secret:
        return json_error(503, "api_disabled", reason="WS_API_SECRET is not set")
    header = request.headers.get("Authorization", "")
    given = bearer_token(header)
    if not hmac.compare_digest(given.encode(), settings.api_secret.encode()):
        return json_error(401, "unauthorized", reason="bad_api_key")
    return None


@bp.before_request
def _check_key_and_size():
    settings = runtime().settings
    refused = require_api_key(settings)
    if refused is not None:
        return refused
    if request.content_length is not None and request.content_length > settings.api_max_body_bytes:
        return json_error(413, "payload_too_large", limit=settings.api_max_body_bytes)
    return None


def refusals_of_api(blueprint: Blueprint, *, api_key: bool = True) -> Blueprint:
    """Give another blueprint /api's refusals: the key and size check (unless it guards
    itself) and the JSON answers for a bad body, a cut body and a broker outage."""
    if api_key:
        blueprint.before_request(_check_key_and_size)
    blueprint.register_error_handler(BadRequest, _bad_request)
    blueprint.register_error_handler(PayloadTooLarge, _too_large)
    blueprint.register_error_handler(BrokerUnavailable, _broker_down)
    return blueprint


def json_body() -> dict:
    raw = request.get_data(cache=False)      # at most MAX_CONTENT_LENGTH bytes
    if request.content_length is None and len(raw) >= runtime().settings.api_max_body_bytes \
            and request.environ["wsgi.input"].read(1):
        # Chunked: werkzeug stops reading at the limit without saying so; a byte
        # beyond it means the body was cut, not that it ended there.
        raise PayloadTooLarge()
    try:
        body = loads(raw, unique_keys=True)
    except ValueError as exc:    # bad UTF-8, absurd nesting, NaN/Infinity/1e400, lone surrogates, a key twice
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _text(body, name, required=True):
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string")
    return value


def _id(body, name: str):
    value = body.get(name)
    if not valid_id(value):
        raise BadRequest(f"{name} must be an id matching [A-Za-z0-9_-]{{1,128}}")
    return value


def _address(body) -> tuple[tuple[str, ...], tuple[str, ...]]:
    channels, users = (), ()
    if body.get("channel") is not None:
        try:
            channels = (parse_channel_any(body["channel"]).key,)
        except InvalidChannel as exc:
            raise BadRequest(f"channel: {exc}") from None
    if body.get("userId") is not None:
        users = (_id(body, "userId"),)
    return channels, users


def publish(route: Route, payload: bytes) -> dict:
    """`payload` is the event already serialised (`wsframes.dumps`): whatever cannot be
    written as standard JSON was refused before anything was published. Returns its
    positions `{stream: offset}`."""
    positions = runtime().broker.publish(route, payload)
    metrics.EVENTS_PUBLISHED.inc()
    return positions


@bp.post("/events")
def post_events():
    body = json_body()
    channels, users = _address(body)
    if "events" in body:
        items = body["events"]
        if not isinstance(items, list) or not items:
            raise BadRequest("events must be a non-empty list")
        limit = runtime().settings.api_max_events
        if len(items) > limit:
            raise BadRequest(f"at most {limit} events per request", limit=limit)
    elif "event" in body:
        items = [body["event"]]
    else:
        raise BadRequest("body needs `event` or `events`")
    listed = "events" in body
    routed = []
    for index, item in enumerate(items):        # all checked and serialised before any is published
        where = {"index": index} if listed else {}
        try:
            event, address = _list_item(item, (channels, users)) if listed else (item, (channels, users))
            routed.append((route_event(event, *address), dumps(event)))
        except BadRequest as exc:               # a list item's own address
            raise BadRequest(exc.fields["reason"], **where) from None
        except ValueError as exc:               # InvalidEvent, or not writable as standard JSON
            raise BadRequest(str(exc), **where) from None
    positions = [publish(route, payload) for route, payload in routed]
    return jsonify({"published": len(routed), "positions": positions}), 202


def _list_item(item, default_address):
    """A list item is a bare event (it has `type`; the top-level address applies) or
    `{"event": E, "channel"?, "userId"?}` with its own address, which replaces the
    top-level one: `notifyNewPost` sends one event to each subscriber in one request."""
    if isinstance(item, dict) and "type" not in item and "event" in item:
        extra = set(item) - {"event", "channel", "userId"}
        if extra:
            raise BadRequest(f"an addressed list item has only event, channel, userId; not {sorted(extra)}")
        address = _address(item)
        return item["event"], (address if any(address) else default_address)
    return item, default_address


def _new_notification(body) -> tuple[str, str, str, str, dict | None]:
    """userId, type, title, message, metadata of a notification body, checked."""
    user_id = _id(body, "userId")
    kind, title, message = _text(body, "type"), _text(body, "title"), _text(body, "message")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRequest("metadata must be a JSON object")
    return user_id, kind, title, message, metadata


@contextmanager
def _store_refusals(kind):
    """What the store refuses in a new notification, as a 400."""
    try:
        yield
    except UnknownNotificationType:
        raise BadRequest(f"type {kind!r} is not a NotificationType") from None
    except ValueError as exc:      # text or metadata the database cannot store (NUL, bad JSON)
        raise BadRequest(str(exc)) from None


def _push_notification(user_id: str, row: dict):
    """`notification` with the ROW to every tab of the user; a 503 carrying the row when
    the broker is down (the row is written: it arrives as unread later), else None."""
    try:
        publish(Route(users=(user_id,)), dumps({"type": "notification", "userId": user_id, "notification": row}))
    except BrokerUnavailable:
        return json_error(503, "broker_unavailable", notification=row)
    return None


@bp.post("/notifications")
def post_notification():
    user_id, kind, title, message, metadata = _new_notification(json_body())
    with _store_refusals(kind):
        row = runtime().store.create_notification(user_id, kind, title, message, metadata)
    if row is None:
        return json_error(404, "not_found", reason="unknown_user")
    return _push_notification(user_id, row) or (jsonify(row), 201)


@bp.post("/notifications/push")
def post_notification_push():
    """The app's sendNotification after its route wrote the row (PROTOCOL.md 4.1): push
    that row, found by `metadata.id` or by its content; create one only when none is
    there. 200 with the row pushed, 201 when it was created."""
    user_id, kind, title, message, metadata = _new_notification(json_body())
    try:
        with _store_refusals(kind):
            answer = runtime().pushes.row_for(user_id, kind, title, message, metadata)
    except NotFound:
        return json_error(404, "not_found", reason="metadata.id names no notification of this user")
    if answer is None:
        return json_error(404, "not_found", reason="unknown_user")
    row, created = answer
    return _push_notification(user_id, row) or (jsonify({"notification": row, "created": created}),
                                                201 if created else 200)


@bp.post("/likes")
def post_likes():
    """`post_liked` (or `post_unliked` with `isLiked: false`) to `post_<postId>`: the
    app's updatePostLikes(postId, likesCount, userId?) and the seed's
    updatePostLikes(postId, userId, isLiked), which read the count from the database:
    without `likesCount` in the body it is the post's `likesCount` there."""
    body = json_body()
    post_id = _id(body, "postId")
    # the app's updatePostLikes(postId, likesCount, userId?) may not name the liker
    user_id = None if body.get("userId") is None else _id(body, "userId")
    liked = body.get("isLiked", True)
    if not isinstance(liked, bool):
        raise BadRequest("isLiked must be true or false")
    count = body.get("likesCount")
    if count is None:
        count = runtime().store.post_likes(post_id)
        if count is None:
            return json_error(404, "not_found", reason="unknown_post")
    elif isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BadRequest("likesCount must be a whole number >= 0")
    event = {"type": "post_liked" if liked else "post_unliked", "postId": post_id, "userId": user_id,
             "likesCount": count}
    positions = publish(route_event(event), dumps(event))
    return jsonify({"published": 1, "positions": [positions], "likesCount": count}), 202


@bp.post("/notifications/read")
def post_notification_read():
    body = json_body()
    user_id = _id(body, "userId")
    notification_id = _id(body, "notificationId")
    answer = runtime().store.read_notification(user_id, notification_id)
    if answer is None:
        return json_error(404, "not_found")
    row, changed = answer
    if changed:      # pushed on change only: a read of a read row told every tab already
        publish(Route(users=(user_id,)), dumps({"type": "notification_read", "userId": user_id,
                                                "notificationId": notification_id}))
    return jsonify({"notification": row}), 200


@bp.post("/notifications/clear")
def post_notifications_clear():
    body = json_body()
    user_id = _id(body, "userId")
    cleared = runtime().store.clear_notifications(user_id)
    if cleared:      # pushed on change only
        publish(Route(users=(user_id,)), dumps({"type": "notifications_cleared", "userId": user_id}))
    return jsonify({"cleared": cleared}), 200
