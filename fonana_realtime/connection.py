"""One client connection: its one write path, its bounded backlog, its read loop.

Everything written to the socket (events, replies, pings, pongs, close frames)
goes through `Connection.send`. It first tries a non-blocking write straight from
the caller's greenlet, so a publisher never waits on a client; only when the kernel
buffer is full is the rest parked in a bounded backlog, drained by a writer
greenlet that exists only for that moment. A backlog over its limits closes that
one client with 4009. Writes are all-or-backlog, so a slow reader can never get a
torn frame.
"""
from __future__ import annotations

import itertools
import logging
import socket
import time
from collections import deque

import gevent
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from . import close_codes, error_codes, metrics
from .wsframes import close_frame, json_frame, loads, pong_frame

log = logging.getLogger("fonana_realtime.connection")
_ids = itertools.count(1)

# How long a closing connection may take to answer our close frame before we cut it.
CLOSE_GRACE_SECONDS = 5.0
# A refusal this long after the previous one starts a new excess run (rate limit).
ABUSE_QUIET_SECONDS = 1.0


class Connection:
    """State of one WebSocket client. Created once the handshake passed every check; its
    first write is the 101 answer with the welcome frame (web/websocket.serve)."""

    __slots__ = ("id", "sock", "proto", "protocol", "user_id", "expires_at", "ip", "channels",
                 "backlog", "backlog_bytes", "backlog_frames", "mid_frame", "closing", "closed", "close_deadline",
                 "awaiting_pong", "next_ping", "tokens", "token_time", "over_limit_since", "last_refused",
                 "limits", "_in_parts", "_in_size", "_in_binary")

    def __init__(self, sock, proto, user_id: str, expires_at: float, ip: str, limits,
                 protocol: str | None = None):
        self.id = next(_ids)
        self.sock = sock                  # gevent socket, upgraded (web/upgrade.py)
        self.proto = proto                # wsproto frame protocol: parses what the client sends
        self.protocol = protocol          # the negotiated subprotocol ("fonana.v2") or None (legacy)
        self.user_id = user_id
        self.expires_at = expires_at
        self.ip = ip
        self.limits = limits              # the Settings (frame, backlog and rate limits)
        self.channels: set[str] = set()
        self.backlog: deque | None = None   # (bytes, frame count) not yet written
        self.backlog_bytes = 0
        self.backlog_frames = 0
        self.mid_frame = False
        self.closing = False              # close frame queued; no more events
        self.closed = False               # socket is gone
        self.close_deadline = 0.0
        now = time.monotonic()
        self.awaiting_pong = False
        self.next_ping = now + limits.ping_interval
        self.tokens = float(limits.rate_burst)
        self.token_time = now
        self.over_limit_since = 0.0
        self.last_refused = 0.0
        self._in_parts: list = []
        self._in_size = 0
        self._in_binary = False

    # ---- the one write path -------------------------------------------------

    def send(self, data: bytes, frames: int = 1) -> bool:
        """Write whole frames (`frames` of them, back to back in `data`), now or via the
        backlog. False if the connection is gone or this write overflowed it."""
        if self.closing or self.closed:
            return False
        return self._write(data, frames)

    def _write(self, data: bytes, frames: int = 1) -> bool:
        if self.backlog is not None:
            return self._park(data, frames)
        try:
            sent = self.sock.send(data, 0, 0.0)     # gevent: timeout 0 = never wait
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return False
        if sent == len(data):
            return True
        self.backlog = deque()
        self.backlog_bytes = self.backlog_frames = 0
        self.mid_frame = sent > 0                    # the client holds part of a frame
        if not self._park(memoryview(data)[sent:], frames):
            return False                             # overflowed at once: closed with 4009
        gevent.spawn(self._drain)
        return True

    def _park(self, data, frames: int) -> bool:
        self.backlog.append((data, frames))
        self.backlog_bytes += len(data)
        self.backlog_frames += frames
        if (self.backlog_bytes > self.limits.send_backlog_bytes
                or self.backlog_frames > self.limits.send_backlog_frames):
            self.overflow()
            return False
        return True

    def _drain(self):
        """Writer greenlet: empties the backlog with blocking writes, then ends."""
        try:
            while self.backlog:
                self.mid_frame = True
                self.sock.sendall(self.backlog[0][0])
                if self.backlog is None:       # aborted while we were writing
                    return
                self.mid_frame = False
                data, frames = self.backlog.popleft()
                self.backlog_bytes -= len(data)
                self.backlog_frames -= frames
            self.backlog = None
        except (OSError, AttributeError):
            self.abort()

    def overflow(self):
        """The client does not read: drop what it has not taken and close with 4009."""
        log.info("slow client closed", extra={"event": "slow_client", "user_id": self.user_id,
                                               "conn_id": self.id})
        metrics.SLOW_CLIENT_CLOSES.inc()
        self.backlog = None
        self.closing = True
        if not self.mid_frame:
            # Best effort, only at a frame boundary (never inside a half-sent frame); its
            # buffer is full, so this usually writes nothing.
            try:
                self.sock.send(close_frame(close_codes.SLOW_CONSUMER,
                                           close_codes.REASONS[close_codes.SLOW_CONSUMER]), 0, 0.0)
            except OSError:
                pass
        self.abort()

    def close(self, code: int, reason: str | None = None):
        """Start the closing handshake: queue our close frame; the read loop ends when
        the client answers, or the heartbeat cuts it after CLOSE_GRACE_SECONDS."""
        if self.closing or self.closed:
            return
        self._write(close_frame(code, close_codes.REASONS.get(code, "") if reason is None else reason))
        self.closing = True
        self.close_deadline = time.monotonic() + CLOSE_GRACE_SECONDS

    def abort(self):
        """Drop the TCP connection now; wakes the read loop, which unregisters us."""
        if self.closed:
            return
        self.closed = True
        self.closing = True
        self.backlog = None
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- replies ------------------------------------------------------------

    def send_json(self, obj) -> bool:
        if self.send(json_frame(obj)):
            metrics.FRAMES_OUT.inc()
            return True
        return False

    def send_error(self, code: str, channel=None) -> bool:
        return self.send_json(error_codes.error_payload(code, channel))

    # ---- rate limit (token bucket) -------------------------------------------

    def take_token(self, now: float) -> bool:
        """One command's worth of the bucket. Sustained excess → close 4008.

        A flood is one run of refusals without a quiet gap of ABUSE_QUIET_SECONDS: the
        odd command the refilling bucket lets through mid-flood does not end it (else a
        flood faster than the rate would never count as sustained)."""
        rate = self.limits.rate_per_sec
        self.tokens = min(float(self.limits.rate_burst), self.tokens + (now - self.token_time) * rate)
        self.token_time = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        if not self.over_limit_since or now - self.last_refused >= ABUSE_QUIET_SECONDS:
            self.over_limit_since = now
        self.last_refused = now
        return False

    def abusing(self, now: float) -> bool:
        return bool(self.over_limit_since) and now - self.over_limit_since >= self.limits.rate_abuse_seconds

    # ---- the read loop --------------------------------------------------------

    def read_loop(self, on_text):
        """Read until the peer closes or we abort. `on_text(conn, str)` handles one
        complete text message; binary messages are answered with invalid_message."""
        sock, proto = self.sock, self.proto
        while not self.closed:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            try:
                proto.receive_data(data)
                for event in proto.events():
                    if not self._on_event(event, on_text):
                        return
            except Exception:          # a parser bug must cost one connection, not a worker
                log.exception("read loop failed", extra={"event": "conn_error", "conn_id": self.id})
                self.close(close_codes.INTERNAL_ERROR)
                return

    def _on_event(self, event, on_text) -> bool:
        if isinstance(event, (TextMessage, BytesMessage)):
            if self.closing:
                return True
            data = event.data
            size = len(data)
            if isinstance(data, str) and size * 4 > self.limits.max_message_bytes - self._in_size:
                size = len(data.encode())
            self._in_size += size
            if self._in_size > self.limits.max_message_bytes:
                self.close(close_codes.TOO_BIG)
                return True
            self._in_binary = isinstance(event, BytesMessage)
            if not event.message_finished:
                if not self._in_binary:
                    self._in_parts.append(data)
                return True
            parts, self._in_parts, self._in_size = self._in_parts, [], 0
            if self._in_binary:
                self.send_error(error_codes.INVALID_MESSAGE)
                return True
            parts.append(data)
            on_text(self, "".join(parts) if len(parts) > 1 else data)
        elif isinstance(event, Ping):
            if not self.closed:
                self._write(pong_frame(event.payload))
        elif isinstance(event, Pong):
            self.awaiting_pong = False
        elif isinstance(event, CloseConnection):
            if not self.closing:
                # Echo the client's code (1005 "no status" is echoed as an empty close).
                code = event.code if event.code not in (1005, 1006) else close_codes.NORMAL
                self._write(close_frame(code, (event.reason or "")[:100]))
                self.closing = True
            return False
        return True


def parse_command(text: str):
    """A client frame → (type, object), or (None, error code)."""
    try:
        obj = loads(text)
    except ValueError:
        return None, error_codes.INVALID_MESSAGE
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return None, error_codes.INVALID_MESSAGE
    return obj["type"], obj
