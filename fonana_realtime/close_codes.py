"""Every WebSocket close code the server sends, and what it means (PROTOCOL.md 2.5)."""

NORMAL = 1000            # normal closure
GOING_AWAY = 1001        # server shutting down or draining: reconnect with jitter
PROTOCOL_ERROR = 1002    # the peer broke the WebSocket framing rules
INVALID_PAYLOAD = 1007   # a text frame that is not valid UTF-8
TOO_BIG = 1009           # inbound message over WS_MAX_MESSAGE_BYTES
INTERNAL_ERROR = 1011    # a bug on our side: reconnect
TOKEN_EXPIRED = 4001     # the token's exp passed (or an `auth` for another user)
RATE_LIMITED = 4008      # sustained command flood
SLOW_CONSUMER = 4009     # the send backlog overflowed: the client does not read
DISCONNECTED = 4010      # an operator's POST /api/disconnect: reconnect with jitter
TOKEN_REVOKED = 4011     # its token was revoked (POST /api/revoke): get a new one first

REASONS = {
    NORMAL: "normal",
    GOING_AWAY: "server going away",
    PROTOCOL_ERROR: "protocol error",
    INVALID_PAYLOAD: "invalid utf-8",
    TOO_BIG: "message too big",
    INTERNAL_ERROR: "internal error",
    TOKEN_EXPIRED: "token expired",
    RATE_LIMITED: "rate limited",
    SLOW_CONSUMER: "send queue overflow",
    DISCONNECTED: "disconnected by operator",
    TOKEN_REVOKED: "token revoked",
}
