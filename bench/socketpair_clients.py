"""WebSocket clients over socketpairs for the in-process connect benchmarks
(bench/connect_instructions.py, bench/storm_instructions.py), run inside their valgrind
harnesses: the handshake goes through the measured tree's `web/websocket.handshake` with
a WSGI environ as gunicorn builds it, the client's frames are masked as a browser's are,
and a close waits for the server's end of the TCP. `websocket` is passed in: the caller
imports it from the tree it measures.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import struct


def masked(opcode: int, payload: bytes) -> bytes:
    """One client frame (FIN, masked; payloads under 64 KiB)."""
    head = bytes([0x80 | opcode])
    head += bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def read_until(sock, needle: bytes, got: bytes = b"") -> bytes:
    while needle not in got:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("the server closed the connection early")
        got += chunk
    return got


def connect(websocket, app, rt, token: str, protocol: str = ""):
    """A client through the handshake up to `connected`: its (gevent) socket."""
    from gevent import socket as gsocket
    server, client = socket.socketpair()
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/ws", "QUERY_STRING": "token=" + token,
               "HTTP_HOST": "127.0.0.1", "HTTP_UPGRADE": "websocket", "HTTP_CONNECTION": "Upgrade",
               "HTTP_SEC_WEBSOCKET_VERSION": "13",
               "HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(os.urandom(16)).decode(),
               "REMOTE_ADDR": "127.0.0.1", "gunicorn.socket": gsocket.socket(fileno=server.detach())}
    if protocol:
        environ["HTTP_SEC_WEBSOCKET_PROTOCOL"] = protocol
    client = gsocket.socket(fileno=client.detach())
    try:
        websocket.handshake(app, rt, environ, lambda *a: None)
        raise SystemExit("the handshake was refused")
    except StopIteration:
        pass
    read_until(client, b'"connected"')
    return client


def subscribe_notifications(client, user: str, until: bytes) -> None:
    """Subscribe to the user's own notifications and read up to the frame `until` names."""
    client.sendall(masked(1, json.dumps({"type": "subscribe",
                                         "channel": {"type": "notifications", "userId": user}}).encode()))
    read_until(client, until)


def close(client) -> None:
    """A close frame (1000), then read the close echo and the server's end of the TCP."""
    client.sendall(masked(8, struct.pack("!H", 1000)))
    while client.recv(65536):
        pass
    client.close()
