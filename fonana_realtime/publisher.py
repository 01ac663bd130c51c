"""Send events to fonana-realtime from other Python services (plain Python, no gevent).

    from fonana_realtime.publisher import RedisPublisher, HttpPublisher

    pub = RedisPublisher("redis://127.0.0.1:6379/0")     # default: REDIS_URL, REDIS_PREFIX
    pub.post_liked("post-1", user_id="user-2", likes_count=5)
    pub.publish({"type": "my_event", "x": 1}, user_id="user-2")

    api = HttpPublisher("http://127.0.0.1:3002", api_key="...")   # default: WS_API_SECRET
    row = api.create_notification("user-2", "LIKE_POST", "New like", "Someone liked your post")

Every event is checked against the catalogue (`events.route_event`) before anything is
sent, so a mistake raises `InvalidEvent` here rather than being dropped by the server.
RedisPublisher publishes exactly as the server's API does, through the publish script
(`redis_history.py`, `redis_publish.lua`, docs/PUBLISHING.md): one call per event gives
it an offset in every stream of its route, keeps it in their history and PUBLISHes one
envelope to each topic (`<prefix>channel:<key>`, `<prefix>user:<id>`), so each
connection gets it once and a client that was away can recover it.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from datetime import datetime, timezone

from .channels import InvalidChannel, parse_channel_any, valid_id
from .events import InvalidEvent, route_event
from .redis_history import Published, RedisHistory
from .wire import DEFAULT_PREFIX, envelope, route_topics
from .wsframes import dumps

DEFAULT_TIMEOUT = 2.0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _iso_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _address(channel, user_id) -> tuple[tuple[str, ...], tuple[str, ...]]:
    channels: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    if channel is not None:
        try:
            channels = (parse_channel_any(channel).key,)
        except InvalidChannel as exc:
            raise InvalidEvent(f"channel: {exc}") from None
    if user_id is not None:
        if not valid_id(user_id):
            raise InvalidEvent("user_id must be an id matching [A-Za-z0-9_-]{1,128}")
        users = (user_id,)
    return channels, users


class PublishError(Exception):
    """The event was valid but could not be handed over (Redis down, HTTP error)."""

    def __init__(self, message: str, status: int | None = None, body=None):
        super().__init__(message)
        self.status = status
        self.body = body


class _Helpers:
    """The old sendNotification-style helpers; each builds one event and publishes it."""

    def publish(self, event: dict, channel=None, user_id: str | None = None):
        """Publish one event. Without `channel`/`user_id` it goes where its type is
        routed (PROTOCOL.md section 3); with both, to the union (once per connection).
        `channel` is a channel object (`{"type":"post","postId":"p1"}`) or a key (`"post_p1"`)."""
        channels, users = _address(channel, user_id)
        route = route_event(event, channels, users)     # raises InvalidEvent
        try:
            payload = dumps(event)
        except ValueError as exc:      # NaN/Infinity or a lone surrogate: no browser could read it
            raise InvalidEvent(f"event is not standard JSON: {exc}") from None
        return self._send(event, payload, route, channel, user_id)

    def _send(self, event, payload, route, channel, user_id):  # pragma: no cover - abstract
        raise NotImplementedError

    def notification(self, user_id: str, notification: dict):
        """Push a notification ROW (already written to `notifications`) to every tab of the user."""
        return self.publish({"type": "notification", "userId": user_id, "notification": notification})

    def notification_read(self, user_id: str, notification_id: str):
        return self.publish({"type": "notification_read", "userId": user_id,
                             "notificationId": notification_id})

    def notifications_cleared(self, user_id: str):
        return self.publish({"type": "notifications_cleared", "userId": user_id})

    def post_liked(self, post_id: str, user_id: str, likes_count: int):
        return self.publish({"type": "post_liked", "postId": post_id, "userId": user_id,
                             "likesCount": likes_count})

    def post_unliked(self, post_id: str, user_id: str, likes_count: int):
        return self.publish({"type": "post_unliked", "postId": post_id, "userId": user_id,
                             "likesCount": likes_count})

    def post_created(self, post: dict, user_id: str, timestamp: str | None = None):
        """`user_id` is the author; goes to `feed_<user_id>`."""
        return self.publish({"type": "post_created", "post": post, "userId": user_id,
                             "timestamp": timestamp or _iso_now()})

    def new_post_from_subscription(self, subscriber_id: str, post: dict):
        return self.publish({"type": "new_post_from_subscription", "post": post}, user_id=subscriber_id)

    def post_deleted(self, post_id: str):
        return self.publish({"type": "post_deleted", "postId": post_id})

    def comment_added(self, post_id: str, comment: dict):
        return self.publish({"type": "comment_added", "postId": post_id, "comment": comment})

    def comment_deleted(self, post_id: str, comment_id: str):
        return self.publish({"type": "comment_deleted", "postId": post_id, "commentId": comment_id})

    def creator_updated(self, creator_id: str, data: dict):
        return self.publish({"type": "creator_updated", "creatorId": creator_id, "data": data})

    def new_subscription(self, creator_id: str, user_id: str):
        return self.publish({"type": "new_subscription", "creatorId": creator_id, "userId": user_id})

    def feed_update(self, user_id: str, posts: list):
        return self.publish({"type": "feed_update", "userId": user_id, "posts": posts})

    def subscription_cancelled(self, creator_id: str, user_id: str):
        return self.publish({"type": "subscription_cancelled", "creatorId": creator_id, "userId": user_id})

    def earnings_updated(self, creator_id: str, earnings):
        return self.publish({"type": "earnings_updated", "creatorId": creator_id, "earnings": earnings})

    def flash_sale_created(self, creator_id: str, flash_sale: dict):
        return self.publish({"type": "flash_sale_created", "creatorId": creator_id, "flashSale": flash_sale})

    def flash_sale_ended(self, creator_id: str, flash_sale_id: str):
        return self.publish({"type": "flash_sale_ended", "creatorId": creator_id, "flashSaleId": flash_sale_id})

    def post_purchased(self, post_id: str, user_id: str, amount=None):
        """`user_id` is the buyer; goes to every tab of the buyer."""
        event = {"type": "post_purchased", "postId": post_id, "userId": user_id}
        if amount is not None:
            event["amount"] = amount
        return self.publish(event)

    def subscription_updated(self, creator_id: str, user_id: str, tier: str):
        """`user_id` is the subscriber; goes to every tab of the subscriber."""
        return self.publish({"type": "subscription_updated", "creatorId": creator_id, "userId": user_id,
                             "tier": tier})


class RedisPublisher(_Helpers):
    """Publishes straight to Redis, exactly as the server's own API does: with positions,
    through the publish script (redis_history.py), so the event gets an offset in every
    stream of its route and a place in their history (PROTOCOL.md 7).

    `publish` returns how many server workers received the message (Redis's PUBLISH
    count, summed over the route's topics; 0 means nobody is listening for it now) as a
    `Published`, an int that also carries `.id` and `.positions` {stream: (epoch, offset)}.
    Raises PublishError when Redis cannot be reached within `timeout` seconds.

    The history bounds are the server's settings and are read from the same environment
    variables (WS_HISTORY_SIZE, WS_HISTORY_SECONDS, WS_HISTORY_META_SECONDS; defaults
    100, 300, 86400); a publisher with other values trims that stream differently.
    """

    def __init__(self, url: str | None = None, prefix: str | None = None, *, client=None,
                 timeout: float = DEFAULT_TIMEOUT, history_size: int | None = None,
                 history_seconds: int | None = None, history_meta_seconds: int | None = None):
        import redis

        from .broker.link import open_link

        self.prefix = prefix if prefix is not None else os.environ.get("REDIS_PREFIX", DEFAULT_PREFIX)
        if client is None:
            url = url or os.environ.get("REDIS_URL")
            if not url:
                raise ValueError("RedisPublisher needs a Redis URL (argument or REDIS_URL)")
            client = open_link(url, timeout).client     # any REDIS_URL topology (PROTOCOL.md 10)
        self.client = client
        self.history = RedisHistory(
            client, self.prefix,
            size=_env_int("WS_HISTORY_SIZE", 100) if history_size is None else history_size,
            seconds=_env_int("WS_HISTORY_SECONDS", 300) if history_seconds is None else history_seconds,
            meta_seconds=(_env_int("WS_HISTORY_META_SECONDS", 86400) if history_meta_seconds is None
                          else history_meta_seconds))
        self._errors = redis.RedisError

    def _send(self, event, payload, route, channel, user_id) -> Published:
        try:
            return self.history.publish(route_topics(route), payload)
        except self._errors as exc:
            raise PublishError(f"redis: {type(exc).__name__}") from None

    def close(self):
        self.client.close()


class HttpPublisher(_Helpers):
    """Publishes through the server's HTTP API (`POST /api/events`), for services
    without Redis. Returns the decoded JSON answer; raises PublishError on any
    non-2xx answer (e.g. 503 `broker_unavailable`) or when the server cannot be reached."""

    def __init__(self, base_url: str = "http://127.0.0.1:3002", api_key: str | None = None, *,
                 timeout: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("WS_API_SECRET", "")
        self.timeout = timeout

    def _post(self, path: str, body: dict):
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(body, allow_nan=False).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = raw.decode(errors="replace")[:500]
            raise PublishError(f"HTTP {exc.code} from {path}", exc.code, answer) from None
        except (urllib.error.URLError, OSError) as exc:
            raise PublishError(f"{path}: {type(exc).__name__}") from None

    def _send(self, event, payload, route, channel, user_id):
        body: dict = {"event": event}
        if channel is not None:
            body["channel"] = channel
        if user_id is not None:
            body["userId"] = user_id
        return self._post("/api/events", body)

    def create_notification(self, user_id: str, type: str, title: str, message: str,
                            metadata=None) -> dict:
        """The old sendNotification: writes the row, then pushes `notification`. Returns the ROW."""
        body = {"userId": user_id, "type": type, "title": title, "message": message}
        if metadata is not None:
            body["metadata"] = metadata
        return self._post("/api/notifications", body)


__all__ = ["HttpPublisher", "InvalidEvent", "PublishError", "Published", "RedisPublisher", "envelope"]
