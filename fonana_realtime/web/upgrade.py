"""The WebSocket upgrade, performed from the request gunicorn has already parsed.

Why not flask-sock's `Server(environ)` (simple-websocket): it rebuilt the request text
from the environ and had wsproto parse it a second time with h11, then built a handshake
state machine per client; ~17 % of a connect's CPU in the profile of issue 11. The checks
it made are few (RFC 6455 4.2.1) and are made here on the environ; the answer is one
101 head; what the client then speaks is parsed by wsproto's frame-level `Connection`,
the same parser simple-websocket handed over after its handshake.

No extension is ever negotiated (permessage-deflate declined, see ARCHITECTURE.md).
The only subprotocol selected is `fonana.v2` (PROTOCOL.md, protocol v2); any other offer
is answered without `Sec-WebSocket-Protocol`, which the client may treat as it likes.
"""
from __future__ import annotations

from wsproto import ConnectionType
from wsproto.connection import Connection as FrameProtocol
from wsproto.utilities import generate_accept_token

from ..connection import V2

SUBPROTOCOLS = (V2,)              # ours, in order of preference


class BadHandshake(Exception):
    """Not a WebSocket opening handshake we can answer; `reason` says what is wrong."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def check(environ) -> tuple[bytes, str | None]:
    """The client's key and the subprotocol we select, or BadHandshake.

    Flask's routing (`websocket=True` rules) has already required `Upgrade: websocket`
    and `Connection: upgrade`; what wsproto's handshake checked beyond that is here."""
    if environ.get("REQUEST_METHOD") != "GET":
        raise BadHandshake("method")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
        raise BadHandshake("version")
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
    if not key or not environ.get("HTTP_HOST"):
        raise BadHandshake("key" if not key else "host")
    return key.encode("latin-1"), select_subprotocol(environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL"))


def select_subprotocol(offer: str | None) -> str | None:
    """The first of SUBPROTOCOLS the client offered (a comma-separated list; gunicorn
    joins repeated headers with commas), else None."""
    if not offer:
        return None
    offered = {item.strip() for item in offer.split(",")}
    for name in SUBPROTOCOLS:
        if name in offered:
            return name
    return None


def accept_head(key: bytes, subprotocol: str | None) -> bytes:
    """The 101 response head."""
    head = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + generate_accept_token(key) + b"\r\n")
    if subprotocol is not None:
        head += b"Sec-WebSocket-Protocol: " + subprotocol.encode() + b"\r\n"
    return head + b"\r\n"


def frame_protocol() -> FrameProtocol:
    """wsproto's parser for what the client sends after the 101, with no extensions.

    permessage-deflate is never negotiated: our frames are pre-built, uncompressed, for
    every recipient and client commands are a few bytes, but a client that negotiated it
    compresses what it sends, and the inflate context kept for it cost ~40 KB per
    connection (measured: 52 KB vs 12 KB per idle client)."""
    return FrameProtocol(ConnectionType.SERVER)
