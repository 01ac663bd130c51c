"""A small JSON WebSocket client around `websockets.sync.client.connect`.

It is a real client library over a real socket and offers permessage-deflate like a
browser does. Events are awaited with receive timeouts, never with sleeps; "nothing more
arrives" is asserted with the ping/pong barrier (frames on one connection are ordered).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

WELCOME_MESSAGE = "Successfully connected to WebSocket server"
DEFAULT_TIMEOUT = 5.0


class WSClient:
    def __init__(self, conn, url: str):
        self.conn = conn
        self.url = url
        self.welcome: dict | None = None

    # -- raw I/O ----------------------------------------------------------------------
    def send_json(self, obj) -> None:
        self.conn.send(json.dumps(obj))

    def send_text(self, text: str) -> None:
        self.conn.send(text)

    def send_bytes(self, data: bytes) -> None:
        self.conn.send(data)

    def recv_raw(self, timeout: float = DEFAULT_TIMEOUT):
        return self.conn.recv(timeout=timeout)

    def recv_json(self, timeout: float = DEFAULT_TIMEOUT):
        """The next frame, decoded. Fails on a binary frame or invalid JSON."""
        msg = self.conn.recv(timeout=timeout)
        assert isinstance(msg, str), f"server sent a binary frame: {msg!r}"
        try:
            return json.loads(msg)
        except ValueError as exc:  # pragma: no cover - failure path
            raise AssertionError(f"server sent a frame that is not JSON: {msg!r}") from exc

    def expect_type(self, type_: str, timeout: float = DEFAULT_TIMEOUT) -> dict:
        try:
            frame = self.recv_json(timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"no {type_!r} frame within {timeout}s") from None
        assert isinstance(frame, dict) and frame.get("type") == type_, f"expected a {type_!r} frame, got {frame!r}"
        return frame

    def expect_error(self, code: str, message: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> dict:
        frame = self.expect_type("error", timeout=timeout)
        data = frame.get("data")
        assert isinstance(data, dict), f"error frame without a data object: {frame!r}"
        assert data.get("code") == code, f"expected error code {code!r}, got {frame!r}"
        if message is not None:
            assert data.get("message") == message, f"expected message {message!r}, got {frame!r}"
        return frame

    def expect_event(self, event: dict, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """The next frame must be exactly this event object (events are delivered flat)."""
        try:
            frame = self.recv_json(timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"event {event!r} did not arrive within {timeout}s") from None
        assert frame == event, f"expected the event {event!r} itself, got {frame!r}"
        return frame

    # -- protocol helpers ---------------------------------------------------------------
    def ping(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.send_json({"type": "ping"})
        self.expect_type("pong", timeout=timeout)

    def barrier(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Assert that nothing is queued before our ping: the next frame must be `pong`."""
        self.send_json({"type": "ping"})
        try:
            frame = self.recv_json(timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"no pong within {timeout}s") from None
        assert isinstance(frame, dict) and frame.get("type") == "pong", \
            f"unexpected frame before the pong barrier: {frame!r}"

    def subscribe(self, channel, *, key: str | None = None) -> dict:
        """Subscribe and expect success. For a notifications channel the
        `unread_notifications` frame that follows is stored in `self.unread`."""
        self.send_json({"type": "subscribe", "channel": channel})
        frame = self.expect_type("subscribed")
        data = frame.get("data") or {}
        assert data.get("channel") == channel, f"subscribed echoes another channel: {frame!r}"
        if key is not None:
            assert data.get("channelKey") == key, f"expected channelKey {key!r}: {frame!r}"
        if isinstance(channel, dict) and channel.get("type") == "notifications":
            self.unread = self.expect_type("unread_notifications")
        return frame

    def subscribe_denied(self, channel) -> dict:
        self.send_json({"type": "subscribe", "channel": channel})
        return self.expect_error("access_denied", "Access denied to channel")

    def unsubscribe(self, channel, *, key: str | None = None) -> dict:
        self.send_json({"type": "unsubscribe", "channel": channel})
        frame = self.expect_type("unsubscribed")
        data = frame.get("data") or {}
        assert data.get("channel") == channel, f"unsubscribed echoes another channel: {frame!r}"
        if key is not None:
            assert data.get("channelKey") == key, f"expected channelKey {key!r}: {frame!r}"
        return frame

    def expect_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Read until the server closes; return the close code it sent (None without one)."""
        try:
            while True:
                self.conn.recv(timeout=timeout)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None
        except TimeoutError:
            raise AssertionError(f"the server did not close the connection within {timeout}s") from None

    @property
    def is_open(self) -> bool:
        from websockets.protocol import State
        return self.conn.protocol.state is State.OPEN

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_ws(url: str, *, headers: dict | None = None, origin: str | None = None, welcome: bool = True,
            ping_interval: float | None = 20, open_timeout: float = 10, **kwargs) -> WSClient:
    conn = ws_connect(url, additional_headers=headers, origin=origin, proxy=None, open_timeout=open_timeout, legacy=True,
                      ping_interval=ping_interval, **kwargs)
    client = WSClient(conn, url)
    if welcome:
        try:
            client.welcome = client.expect_type("connected")
        except BaseException:
            client.close()
            raise
    return client


@dataclass
class Refusal:
    status: int
    headers: dict
    body: bytes

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(f"refusal body is not JSON: {self.body!r}") from None


def refused_handshake(url: str, *, headers: dict | None = None, origin: str | None = None) -> Refusal:
    """Attempt a handshake that must be refused before the upgrade; return the HTTP answer."""
    try:
        conn = ws_connect(url, additional_headers=headers, origin=origin, proxy=None, open_timeout=10, legacy=True)
    except InvalidStatus as exc:
        r = exc.response
        return Refusal(r.status_code, {k.lower(): v for k, v in r.headers.raw_items()}, bytes(r.body or b""))
    first = None
    try:
        first = conn.recv(timeout=2)
    except Exception:
        pass
    conn.close()
    raise AssertionError(f"the handshake to {url.split('?')[0]} was upgraded (101); first frame: {first!r}")
