"""What each client command does: subscribe, unsubscribe, ping, auth.

Runs in the connection's own greenlet, so a command that waits on the database
only delays that connection's later commands, never anyone else.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from . import close_codes, error_codes, metrics
from .auth import AuthError, verify_token
from .channels import InvalidChannel, may_subscribe, parse_channel
from .connection import parse_command
from .store import StoreUnavailable

log = logging.getLogger("fonana_realtime.commands")

UNREAD_ON_SUBSCRIBE = 20


def iso_utc(ts: float) -> str:
    # isoformat, not strftime("%f")[:-3]: the same text (checked on 100,000 random
    # times), and strftime showed up at ~2 % of a connect in the storm profile.
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


class Commands:
    def __init__(self, runtime):
        self.rt = runtime

    def handle(self, conn, text: str):
        metrics.FRAMES_IN.inc()
        now = time.monotonic()
        if not conn.take_token(now):
            metrics.RATE_LIMITED.inc()
            if conn.abusing(now):
                log.info("rate limit abuse", extra={"event": "rate_abuse", "user_id": conn.user_id,
                                                     "conn_id": conn.id})
                conn.close(close_codes.RATE_LIMITED)
            else:
                conn.send_error(error_codes.RATE_LIMITED)
            return
        kind, obj = parse_command(text)
        if kind is None:
            conn.send_error(obj)
            return
        handler = self._handlers.get(kind)
        if handler is None:
            conn.send_error(error_codes.UNKNOWN_TYPE)
            return
        handler(self, conn, obj)

    def ping(self, conn, obj):
        conn.send_json({"type": "pong"})

    @staticmethod
    def _channel_of(conn, obj):
        """(channel, the object as sent), or (None, _) after answering invalid_channel."""
        raw = obj.get("channel")
        try:
            return parse_channel(raw), raw
        except InvalidChannel:
            conn.send_error(error_codes.INVALID_CHANNEL, raw if isinstance(raw, (dict, str)) else None)
            return None, raw

    def subscribe(self, conn, obj):
        channel, raw = self._channel_of(conn, obj)
        if channel is None:
            return
        key = channel.key
        if key not in conn.channels and len(conn.channels) >= self.rt.settings.max_subscriptions:
            conn.send_error(error_codes.TOO_MANY_SUBSCRIPTIONS, raw)
            return
        try:
            allowed = may_subscribe(channel, conn.user_id, self.rt.store)
        except StoreUnavailable:
            conn.send_error(error_codes.UNAVAILABLE, raw)
            return
        if not allowed:
            conn.send_error(error_codes.ACCESS_DENIED, raw)
            return
        if conn.closed or conn.closing:       # it went away while we asked the database
            return
        if key not in conn.channels:
            self.rt.hub.subscribe(conn, key)
            metrics.SUBSCRIPTIONS.labels(channel.kind).inc()
        conn.send_json({"type": "subscribed", "data": {"channel": raw, "channelKey": key}})
        if channel.kind == "notifications":
            self._send_unread(conn, raw)

    def _send_unread(self, conn, raw):
        try:
            rows, total = self.rt.store.unread_notifications(conn.user_id, UNREAD_ON_SUBSCRIBE)
        except StoreUnavailable:
            conn.send_error(error_codes.UNAVAILABLE, raw)
            return
        conn.send_json({"type": "unread_notifications",
                        "data": {"notifications": rows, "count": len(rows), "total": total}})

    def unsubscribe(self, conn, obj):
        channel, raw = self._channel_of(conn, obj)
        if channel is None:
            return
        if channel.key in conn.channels:
            self.rt.hub.unsubscribe(conn, channel.key)
            metrics.SUBSCRIPTIONS.labels(channel.kind).dec()
        conn.send_json({"type": "unsubscribed", "data": {"channel": raw, "channelKey": channel.key}})

    def auth(self, conn, obj):
        """Token refresh before `exp`: same user only."""
        try:
            identity = verify_token(obj.get("token") if isinstance(obj.get("token"), str) else None,
                                    self.rt.settings.jwt_secrets, self.rt.settings.jwt_leeway_seconds)
        except AuthError:
            conn.send_error(error_codes.INVALID_TOKEN)
            return
        if identity.user_id != conn.user_id:
            conn.send_error(error_codes.INVALID_TOKEN)
            conn.close(close_codes.TOKEN_EXPIRED, "token is for another user")
            return
        conn.expires_at = identity.expires_at
        conn.send_json({"type": "authenticated", "data": {"expiresAt": iso_utc(identity.expires_at)}})

    _handlers = {"ping": ping, "subscribe": subscribe, "unsubscribe": unsubscribe, "auth": auth}
