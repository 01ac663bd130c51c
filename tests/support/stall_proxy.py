"""A TCP forwarder in front of Redis that can make a worker's pub/sub link silently dead
(centrifugo#1189): the connection stays open, PING is still answered, subscribe
acknowledgements still pass, but the messages pushed to the subscriber are dropped.
Publishes (other connections) go on working. Only the links open at the moment of
`stall()` are affected: a new link works, as after a real failover or middlebox fault.

`hold_listeners()` makes the node unreachable for listener links only, the way a host that
went away is (not refusing: silent): the open ones are cut, a new one connects but its
handshake is never forwarded, so its client waits for its own timeout. Commands and
replication through the proxy go on. `release()` ends that.
"""
from __future__ import annotations

import socket
import threading

from .tcpproxy import TcpProxy

SUBSCRIBER_NAME = b"fonana-rt-sub-"     # the listener's CLIENT SETNAME (broker/redis.py)
# RESP2: a message pushed to a subscriber, classic (SUBSCRIBE) or sharded (a Cluster's SSUBSCRIBE)
PUSHED_MESSAGES = (b"$7\r\nmessage\r\n", b"$8\r\nsmessage\r\n")


class StallProxy(TcpProxy):
    def __init__(self, target_host: str, target_port: int):
        self._subscribers: set[socket.socket] = set()   # client sockets of listener links
        self._stalled: set[socket.socket] = set()
        self.dropped = 0                                 # chunks withheld from stalled links
        self._marks_lock = threading.Lock()
        self._holding = False
        self.held: set[socket.socket] = set()           # listener links whose handshake waits now
        self.holds = threading.Event()                   # set once a listener link was held
        super().__init__(target_host, target_port)

    def hold_listeners(self) -> int:
        """Cut every listener link open now and hold every new one's handshake; returns
        how many were cut."""
        with self._marks_lock:
            self._holding = True
            cut = list(self._subscribers)
        for s in cut:
            self._kill(s)
        return len(cut)

    def release(self) -> None:
        """Listener links pass again (those held meanwhile stay held until they give up)."""
        with self._marks_lock:
            self._holding = False

    def stall(self) -> int:
        """Stall every listener link open now; returns how many."""
        with self._marks_lock:
            self._stalled = set(self._subscribers)
            return len(self._stalled)

    def _end(self, src: socket.socket, dst: socket.socket) -> None:
        # a listener link that ended (rebuilt before the stall) is no longer "open now"
        with self._marks_lock:
            self._subscribers.difference_update((src, dst))
            self.held.difference_update((src, dst))
        super()._end(src, dst)

    def _forward(self, src: socket.socket, dst: socket.socket, data: bytes) -> None:
        if SUBSCRIBER_NAME in data:                     # client -> server: a listener names itself
            with self._marks_lock:
                if self._holding:
                    self.held.add(src)
                    self.holds.set()
                    return
                self._subscribers.add(src)
        if dst in self._stalled and any(kind in data for kind in PUSHED_MESSAGES):
            self.dropped += 1                           # server -> a stalled listener
            return
        dst.sendall(data)
