"""One client connection: its socket, its read loop, its rate bucket, its closing.

Events enter through `Connection.deliver` (fanout hands it the Outgoings of a batch): its
`Streams` (streams.py), which owns where the connection stands on each stream, delivers
them the legacy or the v2 way, chosen once here. Everything written to the socket goes
through its `Writer` (writer.py: the one write path, the bounded backlog, the cork):
events, replies and pings through `Connection.send`, which refuses once the connection
is closing, close frames and pongs straight to the writer (they go out while closing
too). A backlog over its limits closes that one client with 4009 (`overflow`).
"""
from __future__ import annotations

import itertools
import logging
import socket
import time

from gevent import get_hub, sleep
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from . import close_codes, error_codes, metrics
from .streams import Streams
from .wire import user_stream
from .writer import Writer
from .wsframes import close_frame, json_frame, loads, pong_frame

log = logging.getLogger("fonana_realtime.connection")
_ids = itertools.count(1)

# The WebSocket subprotocol of protocol v2 (PROTOCOL.md 7); without it a connection is legacy.
V2 = "fonana.v2"
# How long a closing connection may take to answer our close frame before we cut it
# (the heartbeat cuts it); for a slow client it also bounds writing the frame in flight
# and the 4009 close frame itself.
CLOSE_GRACE_SECONDS = 5.0
# A refusal this long after the previous one starts a new excess run (rate limit).
ABUSE_QUIET_SECONDS = 1.0
# Most frames one inbound message may come in (close 1009 past it, like a message over
# WS_MAX_MESSAGE_BYTES). Empty fragments carry no payload for the size limit to count:
# 3M of them cost +21.8 MB RSS and 25 s of CPU (issue 18). Browsers do not fragment.
MAX_FRAGMENTS = 128
# Longest run of one client's frames handled without letting other greenlets run
# (`read_loop`). gevent's hub polls for I/O only every 50 run callbacks (sleep(0) is
# one), so a flooder whose every turn was one 64 KiB read of 6-byte ping frames (~100 ms
# each) kept a bystander waiting for seconds even with a yield per read; bounding the
# turn bounds that wait to ~50 turns. Against 2 ms, 0.5 ms halved the bystander's median
# round trip during a flood (24-57 ms against 65-126 ms, bench/abuse_flood.py, A/B).
READ_TURN_SECONDS = 0.0005


class Connection:
    """State of one WebSocket client. Created once the handshake passed every check; its
    first write is the 101 answer (`head`) with the welcome frame (lifecycle.serve)."""

    __slots__ = ("id", "writer", "sock", "parser", "protocol", "streams", "deliver", "user_stream", "user_id",
                 "expires_at", "issued_at", "connected_at", "ip", "channels",
                 "closing", "closed",
                 "close_deadline",
                 "awaiting_pong", "next_ping", "tokens", "token_time", "over_limit_since", "last_refused",
                 "settings", "pacer", "pace", "resume", "on_marks", "on_left", "started_at", "closed_by_client", "_in_parts", "_in_size", "_in_frames", "_in_binary")

    def __init__(self, sock, parser, user_id: str, expires_at: float, ip: str, settings,
                 protocol: str | None = None, on_marks=None, on_left=None, pacer=None,
                 head: bytes | None = None, issued_at: float | None = None):
        self.id = next(_ids)
        self.sock = sock                  # gevent socket, upgraded (web/upgrade.py)
        self.writer = Writer(self, sock, head)   # the one write path (the 101 head leads it)
        self.parser = parser              # wsproto frame protocol: parses what the client sends
        self.protocol = protocol          # "fonana.v2" when the handshake negotiated it, else legacy
        self.user_stream = user_stream(user_id)
        self.user_id = user_id
        self.expires_at = expires_at
        self.issued_at = issued_at        # its token's `iat` (revocations.py)
        self.connected_at = time.time()       # wall clock, for operators (GET /api/connections)
        self.ip = ip
        self.settings = settings          # frame, backlog and rate limits, ping interval
        self.channels: set[str] = set()   # the channels it holds: written by its methods only (hub.py)
        # where it stands on each stream it holds, and how its events are delivered
        self.streams = Streams(self, protocol is not None)
        # The one entry point for events (a batch of `Outgoing`, in order):
        # deliver(outgoings, joined_legacy=None, positions=None, shared_v2=None) -> bool.
        # `joined_legacy` is their legacy frames already joined, and `positions` their
        # streams' last positions merged, as `((stream, (epoch, offset)), ...)` pairs,
        # both built once per batch and shared by every recipient (a union's entry may name
        # a stream this connection does not hold); `shared_v2` (outgoing.SharedV2) the
        # batch's joined v2 frames when it is on one stream. False if the connection is
        # gone or overflowed. Legacy or v2, decided here once (streams.Streams).
        self.deliver = self.streams.delivery()
        self.pacer = pacer                # the worker's Pacer for a legacy connection (pacing on)
        self.pace = None                  # its pacing state, only while it is being written to
        self.resume = None                # legacy: what it may replay where a dropped one left off
        # legacy with resume marks in Redis: (conn, (stream, position) pairs) after its marks
        # moved (live_marks.LiveMarks.moved: a killed worker's connections can be resumed),
        # and (conn, streams) once it no longer holds them (LiveMarks.left): set once, at
        # connect time (lifecycle.serve), so no later code asks which protocol it speaks
        self.on_marks = on_marks
        self.on_left = on_left
        self.started_at = 0.0             # wall clock, set when resume is on (resume.py)
        self.closed_by_client = False     # the client started the closing handshake
        self.closing = False              # close frame queued; no more events
        self.closed = False               # socket is gone
        self.close_deadline = 0.0
        now = time.monotonic()
        self.awaiting_pong = False
        self.next_ping = now + settings.ping_interval
        self.tokens = float(settings.rate_burst)
        self.token_time = now
        self.over_limit_since = 0.0
        self.last_refused = 0.0
        self._in_parts: list | None = None   # a fragmented text message's parts so far (made then)
        self._in_size = 0
        self._in_frames = 0
        self._in_binary = False

    # ---- writing ------------------------------------------------------------

    def send(self, data: bytes, frames: int = 1) -> bool:
        """Write whole frames (`frames` of them, back to back in `data`), now or via the
        backlog. False if the connection is gone or this write overflowed it."""
        if self.closing or self.closed:
            return False
        return self.writer.write(data, frames)

    # ---- state other modules ask to change (they call these, never write the fields) ----

    def paced(self, pace):
        """pacing.Pacer: an event frame is written to it; `pace` (pacing.Paced) holds its
        pacing state from now on. Returns `pace`."""
        self.pace = pace
        return pace

    def unpaced(self):
        """pacing.Pacer: quiet again (or gone): its pacing state is dropped."""
        self.pace = None

    def resuming(self, started_at: float, pending):
        """resume.Resume.arrive: when it started (wall clock: marks written before it are
        not its own) and what it may replay (resume.Pending, or None)."""
        self.started_at = started_at
        self.resume = pending

    def resumed(self):
        """resume.Resume: nothing more to replay; what it replayed (for the log line)."""
        pending, self.resume = self.resume, None
        return pending

    def hold_channel(self, key: str):
        """hub.Hub.subscribe: it holds channel `key` now."""
        self.channels.add(key)

    def drop_channel(self, key: str):
        """hub.Hub.unsubscribe: it no longer holds channel `key`."""
        self.channels.discard(key)

    def drop_channels(self):
        """hub.Hub.remove: it is unregistered and holds nothing."""
        self.channels.clear()

    def written(self, outgoings):
        """The pacer wrote these (held) events: their positions move (streams.py)."""
        self.streams.written(outgoings)

    # What the socket has not taken yet (pacing.py counts its held frames against the same
    # limits and writes nothing while it is there).
    @property
    def backlog(self):
        return self.writer.backlog

    @property
    def backlog_bytes(self) -> int:
        return self.writer.backlog_bytes

    @property
    def backlog_frames(self) -> int:
        return self.writer.backlog_frames

    def overflow(self):
        """The client does not read: close it with 4009, in a way it can still see.

        Every frame it was never sent is dropped now (its memory goes at once, not when
        the socket goes); the frame in flight, which the client holds part of, is
        finished, so the stream stays valid; then the 4009 close frame follows. The
        writer greenlet does that with blocking writes, bounded by CLOSE_GRACE_SECONDS:
        the heartbeat cuts the connection at the deadline, close frame written or not.
        A non-blocking try on the full buffer alone almost never got the close frame
        out: the client saw the TCP connection end without one (1006)."""
        log.info("slow client closed", extra={"event": "slow_client", "user_id": self.user_id,
                                               "conn_id": self.id})
        metrics.SLOW_CLIENT_CLOSES.inc()
        if self.pace is not None:          # frames held by pacing were never started either
            self.pace.drop()
        self.closing = True
        self.close_deadline = time.monotonic() + CLOSE_GRACE_SECONDS
        code = close_codes.SLOW_CONSUMER
        self.writer.last(close_frame(code, close_codes.REASONS[code]))

    def close(self, code: int, reason: str | None = None):
        """Start the closing handshake: queue our close frame; the read loop ends when
        the client answers, or the heartbeat cuts it after CLOSE_GRACE_SECONDS."""
        if self.closing or self.closed:
            return
        self.writer.write(close_frame(code, close_codes.REASONS.get(code, "") if reason is None else reason))
        if not self.closing:               # (an overflow on this write is closing it with 4009)
            self.closing = True
            self.close_deadline = time.monotonic() + CLOSE_GRACE_SECONDS

    def abort(self):
        """Drop the TCP connection now; wakes the read loop, which unregisters us."""
        if self.closed:
            return
        self.closed = True
        self.closing = True
        self.writer.stop()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def ended(self):
        """lifecycle: unregistered, aborted, its socket closed; nothing writes or delivers
        to it any more (whatever still holds it, the pacer or the access schedule until
        they prune it, asks `closed` first). It lets go of its writer and its streams
        (and of `deliver`, which is theirs): they point back at it, and those cycles kept
        17 objects per closed legacy connection, 20 per v2 one (the parser and socket
        they reach), for the cyclic collector, which the worker runs in full only every
        FULL_COLLECTION_EVERY middle collections (bench/connection_cycles.py). Now it
        goes by reference counting once the last holder lets go. A writer still
        draining keeps it until its blocked write fails (its `abort` is then a no-op)."""
        self.deliver = _ended
        self.streams = None
        self.writer = None

    # ---- replies ------------------------------------------------------------

    def ping(self, frame: bytes, next_ping: float) -> None:
        """The heartbeat's ping (heartbeat.py): a pong is awaited until `next_ping`."""
        self.awaiting_pong = True
        self.next_ping = next_ping
        self.send(frame)

    def renew(self, expires_at: float, issued_at: float | None) -> None:
        """A new token (`auth`): the connection lives until it expires."""
        self.expires_at = expires_at
        self.issued_at = issued_at

    def send_json(self, obj) -> bool:
        if self.send(json_frame(obj)):
            metrics.step(metrics.FRAMES_OUT)
            return True
        return False

    def send_error(self, code: str, channel=None, reason: str | None = None) -> bool:
        return self.send_json(error_codes.error_payload(code, channel, reason))

    # ---- rate limit (token bucket) -------------------------------------------

    def take_token(self, now: float) -> bool:
        """One command's worth of the bucket. Sustained excess → close 4008.

        A flood is one run of refusals without a quiet gap of ABUSE_QUIET_SECONDS: the
        odd command the refilling bucket lets through mid-flood does not end it (else a
        flood faster than the rate would never count as sustained)."""
        rate = self.settings.rate_per_sec
        self.tokens = min(float(self.settings.rate_burst), self.tokens + (now - self.token_time) * rate)
        self.token_time = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        if not self.over_limit_since or now - self.last_refused >= ABUSE_QUIET_SECONDS:
            self.over_limit_since = now
        self.last_refused = now
        return False

    def abusing(self, now: float) -> bool:
        return bool(self.over_limit_since) and now - self.over_limit_since >= self.settings.rate_abuse_seconds

    def admit(self) -> bool:
        """One inbound frame (a message, a WebSocket ping or pong) against the bucket.
        False: refused, and after WS_RATE_ABUSE_SECONDS of refusals the connection is
        closing with 4008. Control frames count too: unlimited, ping frames were a flood
        nothing closed (issue 18: 97 MB of pongs in 8 s); a heartbeat pong every 25 s
        costs a well-behaved client nothing it would notice."""
        now = time.monotonic()
        if self.take_token(now):
            return True
        metrics.RATE_LIMITED.inc()
        if self.abusing(now):
            log.info("rate limit abuse", extra={"event": "rate_abuse", "user_id": self.user_id, "conn_id": self.id})
            self.close(close_codes.RATE_LIMITED)
        return False

    def admit_command(self) -> bool:
        """`admit` for a message: a refused one is answered `rate_limited` (unless the
        refusal closed the connection: nothing may follow the close frame)."""
        if self.admit():
            return True
        if not self.closing:
            self.send_error(error_codes.RATE_LIMITED)
        return False

    # ---- the read loop --------------------------------------------------------

    def read_loop(self, on_text):
        """Read until the peer closes or we abort. `on_text(conn, str)` handles one
        complete text message; binary messages are answered with invalid_message."""
        sock = self.sock
        # Every read first waits until the hub has seen the socket readable. A recv with
        # data waiting returned without going to the hub: a client that kept data waiting
        # (a flood) held the worker for as long as it wrote, and a bystander's ping waited
        # 9.4 s (issue 18); a read's frames also give way every READ_TURN_SECONDS. Waiting
        # on a watcher of our own, rather than in gevent's `recv`, also leaves a shallower
        # stack for the greenlet to keep while the client is idle: 2,024 bytes against
        # 2,456, and 430 bytes less RSS per idle client (bench/idle_memory.py).
        hub = get_hub()
        readable = hub.loop.io(sock.fileno(), 1)
        try:
            while not self.closed:
                hub.wait(readable)
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data or not self._handle(data, on_text):
                    return
                # Parked until the next read, its frame keeps nothing of this one: the
                # bytes, and (in `_handle`, returned) the last event and its text. Kept,
                # they were ~0.5 KB per idle client (bench/idle_memory.py).
                data = None
        finally:
            readable.close()

    def _handle(self, data: bytes, on_text) -> bool:
        """One read's frames. False: reading is over (the close handshake, an abort, a bug)."""
        parser, writer = self.parser, self.writer
        turn_ends = time.monotonic() + READ_TURN_SECONDS
        try:
            parser.receive_data(data)
            writer.cork()
            try:
                for event in parser.events():
                    if not self._on_event(event, on_text):
                        return False
                    if time.monotonic() > turn_ends:
                        self._give_way()
                        if self.closed:            # aborted meanwhile (the heartbeat, a 4009)
                            return False
                        turn_ends = time.monotonic() + READ_TURN_SECONDS
            finally:
                writer.uncork()
        except Exception:          # a parser bug must cost one connection, not a worker
            log.exception("read loop failed", extra={"event": "conn_error", "conn_id": self.id})
            self.close(close_codes.INTERNAL_ERROR)
            return False
        return True

    def _give_way(self):
        """Let the other greenlets run in the middle of a turn's frames (what they brought
        about so far goes out first)."""
        self.writer.uncork()
        sleep(0)
        self.writer.cork()

    def _on_event(self, event, on_text) -> bool:
        if isinstance(event, (TextMessage, BytesMessage)):
            if self.closing:
                return True
            data = event.data
            size = len(data)
            if isinstance(data, str) and size * 4 > self.settings.max_message_bytes - self._in_size:
                size = len(data.encode())
            self._in_size += size
            self._in_frames += event.frame_finished      # (a frame may arrive in several events)
            if self._in_size > self.settings.max_message_bytes or self._in_frames > MAX_FRAGMENTS:
                self.close(close_codes.TOO_BIG)
                return True
            self._in_binary = isinstance(event, BytesMessage)
            if not event.message_finished:
                if not self._in_binary:
                    if self._in_parts is None:
                        self._in_parts = []
                    self._in_parts.append(data)
                return True
            parts, self._in_parts, self._in_size, self._in_frames = self._in_parts, None, 0, 0
            if self._in_binary:
                if self.admit_command():
                    self.send_error(error_codes.INVALID_MESSAGE)
                return True
            if parts:
                parts.append(data)
                data = "".join(parts)
            on_text(self, data)
        elif isinstance(event, Ping):
            # Nothing may follow our close frame. A ping over the rate is not answered
            # (RFC 6455 5.5.3 lets a pong answer only the latest of several pings).
            if not self.closing and self.admit():
                self.writer.write(pong_frame(event.payload))
        elif isinstance(event, Pong):
            self.awaiting_pong = False
            self.admit()                       # unsolicited pongs are a flood like any other
        elif isinstance(event, CloseConnection):
            if not self.closing:
                self.closed_by_client = True
                # Echo the client's code; 1005 "no status" (a close without a code) and
                # 1006 are never sent on the wire, so those are answered with 1000.
                code = event.code if event.code not in (1005, 1006) else close_codes.NORMAL
                self.writer.write(close_frame(code, (event.reason or "")[:100]))
                self.closing = True
            return False
        return True


def _ended(outgoings, joined_legacy=None, positions=None, shared_v2=None) -> bool:
    """`Connection.deliver` once the connection ended: not delivered, as for any gone one."""
    return False


def parse_command(text: str):
    """A client frame → (type, object), or (None, error code)."""
    try:
        obj = loads(text)
    except ValueError:
        return None, error_codes.INVALID_MESSAGE
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return None, error_codes.INVALID_MESSAGE
    return obj["type"], obj
