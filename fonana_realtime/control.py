"""Control messages (PROTOCOL.md 9): what an operator's call does to live connections,
on every worker of every host.

The API call (web/control.py) checks its body, writes what must outlive the call (a
revocation: revocations.py) and hands one message to the broker (`publish_control`):
Redis pub/sub on one channel every worker listens to, or in process without Redis. Each
worker acts on its own connections of the user named (`Hub.of_user`); nothing here
writes the hub or a connection's fields, it calls their owners.

A message is one JSON object: `{"op": "disconnect", "userId", "code", "reason"}`,
`{"op": "unsubscribe", "userId", "key", "channel"}`, `{"op": "revoke", "userId", "before"}`,
`{"op": "unrevoke", "userId"}`.
"""
from __future__ import annotations

import json
import logging

from . import close_codes, metrics

log = logging.getLogger("fonana_realtime.control")


class Control:
    def __init__(self, hub, commands, revocations, broker):
        self.hub = hub
        self.commands = commands
        self.revocations = revocations
        self.broker = broker
        broker.on_control = self.on_message
        broker.on_control_link = self.on_link

    # ---- sending (the API call's side) ----------------------------------------------

    def send(self, op: str, user_id: str, **fields) -> None:
        """BrokerUnavailable propagates: the caller answers 503."""
        self.broker.publish_control(json.dumps({"op": op, "userId": user_id, **fields}).encode())

    # ---- receiving (every worker) -----------------------------------------------------

    def on_message(self, data: bytes) -> None:
        try:
            msg = json.loads(data)
            op, user_id = msg["op"], msg["userId"]
            handler = self._handlers[op]
            if not isinstance(user_id, str):
                raise TypeError("userId")
        except (ValueError, KeyError, TypeError):
            # only this server writes the control channel; anything else is logged, not acted on
            log.warning("control: malformed message dropped", extra={"event": "control_drop"})
            return
        try:
            handler(self, user_id, msg)
        except Exception:           # one bad message must not stop the next
            log.exception("control: message handling failed", extra={"event": "control_error", "op": op})

    def on_link(self) -> None:
        """The broker hears control messages (again): re-read the revocations (one missed
        while the link was down is in the store) and close what they now refuse."""
        if self.revocations.reload():
            for conn in tuple(self.hub.connections):
                self._close_if_revoked(conn)

    def _disconnect(self, user_id: str, msg: dict) -> None:
        code = msg.get("code", close_codes.DISCONNECTED)
        reason = msg.get("reason")
        for conn in self.hub.of_user(user_id):
            conn.close(code, reason if isinstance(reason, str) else None)
            metrics.OPERATOR_CLOSES.labels("disconnect").inc()

    def _unsubscribe(self, user_id: str, msg: dict) -> None:
        key = msg.get("key")
        for conn in self.hub.of_user(user_id):
            if key in conn.channels:
                self.commands.revoke(conn, key, msg.get("channel", key))

    def _revoke(self, user_id: str, msg: dict) -> None:
        self.revocations.apply(user_id, float(msg["before"]))
        for conn in self.hub.of_user(user_id):
            self._close_if_revoked(conn)

    def _unrevoke(self, user_id: str, msg: dict) -> None:
        self.revocations.lift(user_id)

    def _close_if_revoked(self, conn) -> None:
        if not (conn.closing or conn.closed) and self.revocations.refuses(conn.user_id, conn.issued_at):
            log.info("token revoked: closing", extra={"event": "token_revoked", "user_id": conn.user_id,
                                                      "conn_id": conn.id})
            conn.close(close_codes.TOKEN_REVOKED)
            metrics.OPERATOR_CLOSES.labels("revoke").inc()

    _handlers = {"disconnect": _disconnect, "unsubscribe": _unsubscribe, "revoke": _revoke,
                 "unrevoke": _unrevoke}
