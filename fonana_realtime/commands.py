"""What each client command does: subscribe, unsubscribe, ping, auth, and for
protocol v2 connections `subscribe` with `since` and `recover` (PROTOCOL.md 7).

Runs in the connection's own greenlet, so a command that waits on the database
only delays that connection's later commands, never anyone else.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from . import close_codes, error_codes, metrics
from .auth import AuthError, verify_token
from .batcher import Batcher
from .channels import InvalidChannel, access_until, parse_channel, parse_channel_key
from .connection import V2, parse_command
from .store import StoreUnavailable

log = logging.getLogger("fonana_realtime.commands")

UNREAD_ON_SUBSCRIBE = 20
MAX_EPOCH_LENGTH = 128
# The `reason` of an `invalid_message` error for a v2 command missing a part (PROTOCOL.md 7).
SINCE_SHAPE = '"since" must be {"offset": N, "epoch": E}: N a whole number >= 0, E the epoch you were given'
STREAM_SHAPE = 'recover needs "stream": this connection\'s user stream, "user_<userId>" (the welcome\'s data.user.stream)'


def parse_since(value):
    """`{"offset": N, "epoch": E}` -> (E, N), or None if malformed."""
    if not isinstance(value, dict):
        return None
    offset, epoch = value.get("offset"), value.get("epoch")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        return None
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_LENGTH:
        return None
    return epoch, offset


def recovered_fields(recovery) -> dict:
    """`recovered`, and when false why (`epoch`, `trimmed`, `expired`, `too_many`, `ahead`,
    `unavailable`: history.py's reasons, the metric's labels)."""
    if recovery.ok:
        return {"recovered": True}
    return {"recovered": False, "reason": recovery.reason}


def iso_utc(ts: float) -> str:
    # isoformat, not strftime("%f")[:-3]: the same text (checked on 100,000 random
    # times), and strftime showed up at ~2 % of a connect in the storm profile.
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


class Commands:
    def __init__(self, runtime):
        self.rt = runtime
        # the unread lists the subscribes of one turn of the loop ask for, in one query
        self._unread = Batcher(lambda user_ids: runtime.store.unread_notifications_of(user_ids, UNREAD_ON_SUBSCRIBE),
                               lost=StoreUnavailable, immediate=not runtime.store.round_trips)

    def handler(self, protocol: str | None):
        """What the read loop calls with each text message of a connection of `protocol`
        (the legacy or the v2 command set, decided once, when the connection is made)."""
        return self.handle_v2 if protocol == V2 else self.handle

    def handle_v2(self, conn, text: str):
        self.handle(conn, text, self._v2_handlers)

    def handle(self, conn, text: str, handlers=None):
        """One text message of a legacy connection (`handlers`: a v2 one's)."""
        metrics.step(metrics.FRAMES_IN)
        if not conn.admit_command():
            return
        kind, obj = parse_command(text)
        if kind is None:
            conn.send_error(obj)
            return
        handler = (self._handlers if handlers is None else handlers).get(kind)
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
        """A legacy subscribe: `subscribed`, then what it missed (automatic resume)."""
        self._subscribe(conn, obj, self._subscribe_legacy)

    def subscribe_v2(self, conn, obj):
        self._subscribe(conn, obj, self._subscribe_v2)

    def _subscribe(self, conn, obj, join):
        channel, raw = self._channel_of(conn, obj)
        if channel is None:
            return
        key = channel.key
        if key not in conn.channels and len(conn.channels) >= self.rt.settings.max_subscriptions:
            conn.send_error(error_codes.TOO_MANY_SUBSCRIPTIONS, raw)
            return
        try:
            until = access_until(channel, conn.user_id, self.rt.store)
        except StoreUnavailable:
            conn.send_error(error_codes.UNAVAILABLE, raw)
            return
        if until is None:
            conn.send_error(error_codes.ACCESS_DENIED, raw)
            return
        if conn.closed or conn.closing:       # it went away while we asked the database
            return
        self.rt.access_expiry.watch(conn, key, until, raw)     # math.inf: never looked at again
        join(conn, obj, channel, raw)
        if channel.kind == "notifications" and not (conn.closed or conn.closing):
            self._send_unread(conn, raw)

    def _join(self, conn, channel):
        if channel.key not in conn.channels:
            self.rt.fanout.subscribe(conn, channel.key)     # waits (bounded) until the broker listens
            metrics.step(metrics.subscriptions(channel.kind))

    def _subscribe_legacy(self, conn, obj, channel, raw):
        key = channel.key
        resume = self.rt.resume if key not in conn.channels else None
        joined = resume.before_join(conn, key) if resume is not None else None
        try:
            self._join(conn, channel)
            conn.send_json({"type": "subscribed", "data": {"channel": raw, "channelKey": key}})
        finally:
            if resume is not None:
                resume.after_join(conn, key, joined)     # missed events, right after `subscribed`

    def _subscribe_v2(self, conn, obj, channel, raw):
        """`subscribed` adds the stream's position; with `since`, replay then live."""
        key = channel.key

        def subscribed(epoch, top, recovery=None):
            data = {"channel": raw, "channelKey": key, "stream": key, "offset": top, "epoch": epoch}
            if recovery is not None:
                data.update(recovered_fields(recovery))
            conn.send_json({"type": "subscribed", "data": data})

        if obj.get("since") is None:
            self._join(conn, channel)
            subscribed(*self.rt.fanout.join_position(conn, key))
            return
        since = parse_since(obj["since"])
        if since is None:
            conn.send_error(error_codes.INVALID_MESSAGE, raw, SINCE_SHAPE)
            return
        self.rt.fanout.recover(conn, key, since,
                               reply=lambda rec: subscribed(rec.epoch, rec.top, rec),
                               join=lambda: self._join(conn, channel))

    def recover(self, conn, obj):
        """v2: replay the connection's own user stream after `since` (a legacy connection
        has no such command: unknown_type)."""
        stream = obj.get("stream")
        if not isinstance(stream, str):
            # A malformed command, not a refusal: access_denied here sent people looking
            # for a permission problem they did not have.
            conn.send_error(error_codes.INVALID_MESSAGE, reason=STREAM_SHAPE)
            return
        if stream != conn.user_stream:
            conn.send_error(error_codes.ACCESS_DENIED)
            return
        since = parse_since(obj.get("since"))
        if since is None:
            conn.send_error(error_codes.INVALID_MESSAGE, reason=SINCE_SHAPE)
            return

        def recovered(rec):
            conn.send_json({"type": "recovered", "data": {
                "stream": stream, "offset": rec.top, "epoch": rec.epoch, **recovered_fields(rec)}})

        self.rt.fanout.recover(conn, stream, since, reply=recovered)

    def _send_unread(self, conn, raw):
        try:
            rows, total = self._unread.get(conn.user_id)
        except StoreUnavailable:
            conn.send_error(error_codes.UNAVAILABLE, raw)
            return
        conn.send_json({"type": "unread_notifications",
                        "data": {"notifications": rows, "count": len(rows), "total": total}})

    def unsubscribe(self, conn, obj):
        channel, raw = self._channel_of(conn, obj)
        if channel is None:
            return
        self._leave(conn, channel.key)
        conn.send_json({"type": "unsubscribed", "data": {"channel": raw, "channelKey": channel.key}})

    def _leave(self, conn, key: str):
        if key in conn.channels:
            self.rt.fanout.unsubscribe(conn, key)
            metrics.unsubscribed(key)
        self.rt.access_expiry.forget(conn, key)

    # ---- access that lapses (access_expiry.py calls these at the moment it ends) ----

    def access_until(self, conn, key: str) -> float | None:
        return access_until(parse_channel_key(key), conn.user_id, self.rt.store)

    def revoke(self, conn, key: str, channel):
        """Access to a held channel ended: unsubscribe it and say so (`channel` as the
        client sent it when subscribing)."""
        if key not in conn.channels:
            return
        self._leave(conn, key)
        log.info("access revoked", extra={"event": "access_revoked", "user_id": conn.user_id,
                                           "conn_id": conn.id, "topic": key})
        conn.send_error(error_codes.ACCESS_REVOKED, channel)

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
        if self.rt.revocations.refuses(identity.user_id, identity.issued_at):
            # the connection keeps the token it has (a revoked one was closed with 4011)
            log.info("auth refused", extra={"event": "auth_failed", "reason": "token_revoked",
                                            "user_id": conn.user_id, "conn_id": conn.id})
            conn.send_error(error_codes.TOKEN_REVOKED)
            return
        try:
            exists = self.rt.user_exists(conn.user_id, fresh=True)
        except StoreUnavailable:
            exists = True        # the handshake found the user; an outage must not end every session
        if not exists:           # deleted since the handshake: the handshake would refuse it now
            log.info("auth refused", extra={"event": "auth_failed", "reason": "unknown_user",
                                            "user_id": conn.user_id, "conn_id": conn.id})
            conn.send_error(error_codes.INVALID_TOKEN)
            conn.close(close_codes.TOKEN_EXPIRED, "unknown user")
            return
        conn.renew(identity.expires_at, identity.issued_at)
        conn.send_json({"type": "authenticated", "data": {"expiresAt": iso_utc(identity.expires_at)}})

    _handlers = {"ping": ping, "subscribe": subscribe, "unsubscribe": unsubscribe, "auth": auth}
    _v2_handlers = {**_handlers, "subscribe": subscribe_v2, "recover": recover}
