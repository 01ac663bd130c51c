"""A connection's one write path: what reaches its socket, and in which order.

`Writer.write` first tries a non-blocking write straight from the caller's greenlet, so a
publisher never waits on a client; only when the kernel buffer is full is the rest parked
in a bounded backlog, drained by a greenlet that exists only for that moment (`_drain`,
the one blocking `sendall`). A backlog over its limits has the connection close with 4009
(`Connection.overflow`). Writes are all-or-backlog, so a slow reader can never get a torn
frame. While the read loop handles one read's frames the writer is corked: the replies
that brings about leave as one write (`cork`). The 101 head leads the first write.
"""
from __future__ import annotations

import logging
from collections import deque

import gevent
from gevent import getcurrent

log = logging.getLogger("fonana_realtime.writer")

# While corked (`Writer.cork`), held writes past this many bytes go out at once.
CORK_MAX_BYTES = 65536


class Writer:
    __slots__ = ("conn", "sock", "head", "backlog", "backlog_bytes", "backlog_frames", "mid_frame",
                 "greenlet", "corked")

    def __init__(self, conn, sock, head: bytes | None = None):
        self.conn = conn                  # its closed flag, abort, overflow, backlog limits and pacing
        self.sock = sock
        # Bytes that must precede anything written (the 101 head), joined to the first write,
        # whatever it is (the welcome, or a close frame if it is closed before): one send
        # instead of two per connect, and nothing can ever be written ahead of them. The
        # check costs every later write ~5 ns (micro-benchmark), against a delivery's ~3 µs.
        self.head = head
        self.backlog: deque | None = None   # (bytes, frame count) not yet written
        self.backlog_bytes = 0
        self.backlog_frames = 0
        self.mid_frame = False
        self.greenlet = None              # the greenlet draining the backlog, while there is one
        self.corked: Cork | None = None   # replies held while one read's frames are handled

    def write(self, data: bytes, frames: int = 1) -> bool:
        """Whole frames (`frames` of them, back to back in `data`), now or via the backlog.
        False if the connection is gone or this write overflowed it."""
        cork = self.corked
        if cork is not None:
            if getcurrent() is cork.owner:
                cork.parts.append(data)
                cork.frames += frames
                cork.size += len(data)
                if cork.size >= CORK_MAX_BYTES:
                    self.uncork()
                    self.cork()
                return not self.conn.closed
            self.corked = None               # an event: the replies held before it go with it
            if cork.parts:
                cork.parts.append(data)
                data, frames = b"".join(cork.parts), frames + cork.frames
        if self.head is not None:
            data, self.head = self.head + data, None
        if self.backlog is not None:
            return self._park(data, frames)
        try:
            sent = self.sock.send(data, 0, 0.0)     # gevent: timeout 0 = never wait
        except BlockingIOError:
            sent = 0
        except OSError:
            self.conn.abort()
            return False
        if sent == len(data):
            return True
        self.backlog = deque()
        self.backlog_bytes = self.backlog_frames = 0
        self.mid_frame = sent > 0                    # the client holds part of a frame
        if not self._park(memoryview(data)[sent:], frames):
            return False                             # overflowed at once: closing with 4009
        self._start()
        return True

    def cork(self):
        """Hold the writes of this greenlet until `uncork`, then write them as one.

        The read loop corks while it handles what one read brought: a `subscribe` answers
        `subscribed` and then `unread_notifications` (and a replay), a ping its pong, a
        close its echo. One send instead of two or three, each of which on loopback also
        paid the receiver's TCP input (~2 % of a connect in a reconnect storm, issue 11).
        Writes from other greenlets (events, paced frames, pings) are never held: one that
        comes while replies are held writes them first, then itself, so the order on the
        wire is the order things were written and no event waits on a command's database
        query, nor pacing's spacing on a cork."""
        if self.corked is None:
            self.corked = Cork(getcurrent())

    def uncork(self):
        cork = self.corked
        if cork is not None:
            self.corked = None
            if cork.parts and not self.conn.closed:
                parts = cork.parts
                self.write(parts[0] if len(parts) == 1 else b"".join(parts), cork.frames)

    def _start(self):
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self._drain)

    def _park(self, data, frames: int) -> bool:
        self.backlog.append((data, frames))
        self.backlog_bytes += len(data)
        self.backlog_frames += frames
        conn = self.conn
        pace = conn.pace                  # frames held by pacing count against the same limits
        held_bytes, held_frames = (pace.bytes, len(pace.waiting)) if pace is not None else (0, 0)
        if (self.backlog_bytes + held_bytes > conn.settings.send_backlog_bytes
                or self.backlog_frames + held_frames > conn.settings.send_backlog_frames):
            conn.overflow()
            return False
        return True

    def _drain(self):
        """Empties the backlog with blocking writes, then ends. A closing connection's
        writes are bounded by its close deadline: the heartbeat aborts it then, which
        makes a blocked `sendall` fail."""
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
            self.conn.abort()
        except Exception:
            # A bug here would leave the backlog behind with nobody to write it: every later
            # write (events, pings) would park after it, and the client would hear nothing
            # more without being told (issue 17's symptom). Cut the connection instead: the
            # client reconnects, and a legacy one resumes what it missed.
            conn = self.conn
            log.exception("writing the backlog failed", extra={"event": "conn_error", "conn_id": conn.id,
                                                               "user_id": conn.user_id})
            conn.abort()
        finally:
            self.greenlet = None

    def last(self, frame: bytes):
        """Nothing more for this client but `frame` (4009's close frame): every frame never
        started is dropped now (its memory goes at once, not when the socket goes); the
        frame in flight, which the client holds part of, is finished, so the stream stays
        valid; then `frame`, written by the backlog's greenlet with blocking writes."""
        in_flight = self.backlog[0] if self.mid_frame and self.backlog else None
        self.backlog = deque([in_flight] if in_flight is not None else ())
        self.backlog_bytes = len(in_flight[0]) if in_flight is not None else 0
        self.backlog_frames = in_flight[1] if in_flight is not None else 0
        self.backlog.append((frame, 1))
        self._start()

    def stop(self):
        """The socket is gone: nothing more is written (a blocked `_drain` ends)."""
        self.backlog = None
        self.corked = None


class Cork:
    """The replies a corked writer holds (Writer.cork), and whose they are."""

    __slots__ = ("owner", "parts", "frames", "size")

    def __init__(self, owner):
        self.owner = owner           # the greenlet that corked (the read loop's)
        self.parts: list = []
        self.frames = 0
        self.size = 0
