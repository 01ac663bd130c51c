"""The `error` frames: machine code → the message text the existing client shows.

The texts are compat (PROTOCOL.md 2.2): the Fonana client matches on them.
"""

ACCESS_DENIED = "access_denied"
INVALID_CHANNEL = "invalid_channel"
UNAVAILABLE = "unavailable"
TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
INVALID_MESSAGE = "invalid_message"
UNKNOWN_TYPE = "unknown_type"
RATE_LIMITED = "rate_limited"
TOKEN_EXPIRED = "token_expired"
INVALID_TOKEN = "invalid_token"
ACCESS_REVOKED = "access_revoked"     # a held channel's access ended (lapsed, or POST /api/unsubscribe)
TOKEN_REVOKED = "token_revoked"       # `auth` with a token POST /api/revoke refused

MESSAGES = {
    ACCESS_DENIED: "Access denied to channel",
    INVALID_CHANNEL: "Failed to subscribe",
    UNAVAILABLE: "Failed to subscribe",
    TOO_MANY_SUBSCRIPTIONS: "Failed to subscribe",
    INVALID_MESSAGE: "Invalid message format",
    UNKNOWN_TYPE: "Invalid message format",
    RATE_LIMITED: "Rate limit exceeded",
    TOKEN_EXPIRED: "Token expired",
    INVALID_TOKEN: "Invalid token",
    ACCESS_REVOKED: "Access to channel revoked",
    TOKEN_REVOKED: "Token revoked",
}


def error_payload(code: str, channel=None, reason: str | None = None) -> dict:
    """`reason` (optional, additive): what exactly was wrong, in words for the developer
    reading the frame; clients match on `code`, never on it."""
    data = {"message": MESSAGES[code], "code": code}
    if channel is not None:
        data["channel"] = channel
    if reason is not None:
        data["reason"] = reason
    return {"type": "error", "data": data}
