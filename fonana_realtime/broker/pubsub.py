"""One listener connection to Redis and the replies it still expects (used by redis.py).

A worker's listener holds one of these per node it hears: one for a single Redis or
Sentinel (SUBSCRIBE), one per master of a Cluster (SSUBSCRIBE, sharded pub/sub: a message
travels only to the shard that owns its channel). Only the listener greenlet touches it.

Replies arrive in command order, so a FIFO of expected replies pairs each acknowledgement
with the exact command it answers (and the Event a subscriber waits on). Anything else
(a reply nobody asked for, another kind than expected) is a desync: the connection is
rebuilt. That is also how a Cluster tells us a slot moved: the node pushes an unrequested
`sunsubscribe` for each channel of a slot it no longer serves (a migration, a demotion),
and answers a SSUBSCRIBE for a slot it does not serve with MOVED; either way the listener
drops this connection (only this shard's: `channels` says what it held), reads the slot
map again, subscribes those channels where they are served now and catches them up from
history.
"""
from __future__ import annotations

import time
from collections import deque

import redis
from redis.crc import key_slot

CHANNELS_PER_COMMAND = 500  # resubscribing thousands of topics: a few big commands
PING_EVERY = 10.0           # an idle connection sends PING after this long ...
PONG_WAIT = 5.0             # ... and is dropped when no reply arrives within this

# sharded pub/sub's reply kinds, as the classic ones
_KINDS = {b"message": b"message", b"smessage": b"message",
          b"subscribe": b"subscribe", b"ssubscribe": b"subscribe",
          b"unsubscribe": b"unsubscribe", b"sunsubscribe": b"unsubscribe", b"pong": b"pong"}


class Desync(Exception):
    """A reply that does not match the command it should answer: reconnect."""


class PubSubConn:
    def __init__(self, conn, sharded: bool):
        self.conn = conn                    # a connected redis-py Connection
        self.fd = conn._sock.fileno()
        self.sharded = sharded
        self._subscribe = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self._unsubscribe = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"
        self._expect: deque = deque()       # (kind, channel, event|None) in reply order
        self.pending = 0                    # subscribe acknowledgements still to come
        self.channels: set[bytes] = set()   # what it was asked to hear (and not to stop hearing)
        self.last_rx = time.monotonic()
        self._ping_sent: float | None = None

    # ---- commands ---------------------------------------------------------------------

    def subscribe(self, channels, *, classic: bool = False):
        """[(channel bytes, Event|None)]: the Event is set once Redis acknowledged it.
        `classic`: SUBSCRIBE even on a sharded link (the control channel: every node of a
        Cluster hears a classic PUBLISH)."""
        command = "SUBSCRIBE" if classic else self._subscribe
        commands = []
        for chunk in self._chunks(list(channels), lambda item: item[0], sharded=self.sharded and not classic):
            self._expect.extend((b"subscribe", channel, event) for channel, event in chunk)
            self.channels.update(channel for channel, _ in chunk)
            self.pending += len(chunk)
            commands.append((command, *(channel for channel, _ in chunk)))
        self._send(commands)

    def unsubscribe(self, channels):
        commands = []
        for chunk in self._chunks(list(channels), lambda channel: channel, sharded=self.sharded):
            self._expect.extend((b"unsubscribe", channel, None) for channel in chunk)
            self.channels.difference_update(chunk)
            commands.append((self._unsubscribe, *chunk))
        self._send(commands)

    def _send(self, commands):
        if commands:
            self.conn.send_packed_command(self.conn.pack_commands(commands), check_health=False)

    @staticmethod
    def _chunks(items: list, channel_of, sharded: bool):
        """Commands of at most CHANNELS_PER_COMMAND channels; sharded, each of one slot
        (Redis answers CROSSSLOT to a SSUBSCRIBE naming channels of two slots). They are
        all written at once: thousands of one-channel commands are one write."""
        if sharded:
            by_slot: dict[int, list] = {}
            for item in items:
                by_slot.setdefault(key_slot(channel_of(item)), []).append(item)
            groups = list(by_slot.values())
        else:
            groups = [items]
        for group in groups:
            for start in range(0, len(group), CHANNELS_PER_COMMAND):
                yield group[start:start + CHANNELS_PER_COMMAND]

    # ---- replies ----------------------------------------------------------------------

    def readable(self) -> bool:
        return self.conn.can_read(timeout=0)        # buffered or readable now

    def read(self):
        """One reply: (channel, data) for a message; (b"subscribe", channel, event) for a
        subscribe acknowledgement, None for any other expected reply. Raises Desync,
        redis errors (a MOVED answer to SSUBSCRIBE among them)."""
        reply = self.conn.read_response(disconnect_on_error=False)
        self.last_rx = time.monotonic()
        if isinstance(reply, list) and reply:
            kind = _KINDS.get(reply[0])
            if kind == b"message" and len(reply) == 3:
                return reply[1], reply[2]
        elif reply == b"PONG":
            kind = b"pong"
        else:
            kind = None
        if kind not in (b"subscribe", b"unsubscribe", b"pong"):
            raise Desync(f"unexpected reply type {reply[0] if isinstance(reply, list) else kind!r}")
        if not self._expect:
            raise Desync(f"unrequested {kind!r} reply")
        want_kind, channel, event = self._expect.popleft()
        if want_kind != kind or (channel is not None and reply[1] != channel):
            raise Desync(f"expected {want_kind!r} reply, got {kind!r}")
        if kind == b"pong":
            self._ping_sent = None
            return None
        if event is not None:
            event.set()
        if kind == b"subscribe":
            self.pending -= 1
            return (b"subscribe", channel, event)
        return None

    def idle_timeout(self) -> float:
        """How long the listener may wait for this connection; sends PING when it was
        quiet for PING_EVERY, raises ConnectionError when the PONG is PONG_WAIT late."""
        now = time.monotonic()
        if self._ping_sent is not None:
            if now - self._ping_sent > PONG_WAIT:
                raise redis.ConnectionError("no reply to PING")
            return self._ping_sent + PONG_WAIT - now + 0.01
        idle_until = self.last_rx + PING_EVERY
        if now < idle_until:
            return idle_until - now + 0.01
        self._ping_sent = now
        self._expect.append((b"pong", None, None))
        self.conn.send_command("PING", check_health=False)
        return PONG_WAIT + 0.01

    def close(self):
        """Release everyone waiting on this connection and close it."""
        for _, _, event in self._expect:
            if event is not None:
                event.set()
        self._expect.clear()
        self.pending = 0
        try:
            self.conn.disconnect()
        except Exception:
            pass
