"""A small blocking WebSocket client for the CLI (`python -m fonana_realtime client`).

Built on wsproto, which the server already depends on, so the client runs from the
runtime install alone (`pip install -r requirements.txt`), as the production launch
does; the test suite's `websockets` is a dev-only package.
"""
from __future__ import annotations

import socket
import ssl
import time
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection, RejectData,
                            Request, TextMessage)

READ_SIZE = 65536


class Refused(Exception):
    """The server answered the handshake with an HTTP status instead of upgrading."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


class Closed(Exception):
    """The connection ended; `code` is the close code, None without a close frame."""

    def __init__(self, code: int | None):
        super().__init__(f"closed {code}")
        self.code = code


class Client:
    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 10.0):
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        # OSError (refused, unreachable, no such host) goes to the caller, which says so in a line.
        self.sock = socket.create_connection((parts.hostname, port), timeout=timeout)
        if parts.scheme == "wss":
            self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=parts.hostname)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[str] = []
        self.partial = ""                           # a text message still arriving in fragments
        self.closed: Closed | None = None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.sock.sendall(self.ws.send(Request(host=host, target=target, extra_headers=extra)))
        self._handshake(time.monotonic() + timeout)

    def _handshake(self, deadline: float) -> None:
        status, body, accepted = None, b"", False
        while not accepted:
            events = self._read(deadline)
            if self.closed is not None and not events:
                raise self.closed
            for event in events:
                if isinstance(event, AcceptConnection):
                    accepted = True         # what came with the 101 (the welcome) is kept
                elif isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise Refused(status, "")
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise Refused(status, body.decode(errors="replace"))
                else:
                    self._handle(event)

    def _read(self, deadline: float):
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(READ_SIZE)
        except socket.timeout:
            raise TimeoutError from None
        if not data:                                # the peer ended the TCP connection
            if self.closed is None:
                self.closed = Closed(None)
            return []
        self.ws.receive_data(data)
        return list(self.ws.events())

    def _handle(self, event) -> None:
        if isinstance(event, TextMessage):
            self.partial += event.data
            if event.message_finished:
                self.pending.append(self.partial)
                self.partial = ""
        elif isinstance(event, Ping):
            self.sock.sendall(self.ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            try:
                self.sock.sendall(self.ws.send(event.response()))
            except OSError:
                pass
            self.closed = Closed(event.code)
        elif isinstance(event, BytesMessage):
            pass                                     # the server sends text frames only

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=text)))

    def recv(self, timeout: float) -> str:
        """The next text message; TimeoutError after `timeout`, Closed when the connection ends."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            if self.closed is not None:
                raise self.closed
            for event in self._read(deadline):
                self._handle(event)
        return self.pending.pop(0)

    def close(self) -> None:
        try:
            if self.closed is None:
                self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        except Exception:       # already gone: nothing to say goodbye to
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
