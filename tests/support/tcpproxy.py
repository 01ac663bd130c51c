"""A TCP forwarder the suite can cut and restore: PostgreSQL "going away and coming back"
without touching the real database server (other tests keep using it directly).

It also plays the middleboxes a live client sits behind (issue 17):
- `nodelay=False`: a plain user-space relay (a thread per direction doing recv/sendall)
  that leaves Nagle on both of its sockets, as a simple TCP balancer or proxy does;
- `jitter=s`: each server->client chunk waits a random 0..s seconds before it is sent
  on, in order (as TCP keeps it), so the spacing the server wrote is not the spacing
  that arrives;
- `chunk=n`, `buffer=b`: it reads at most n bytes at a time (frames reach either side cut
  anywhere) and its sockets get b-byte kernel buffers (SO_RCVBUF/SO_SNDBUF).
"""
from __future__ import annotations

import queue
import random
import socket
import threading
import time

from .server import free_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, nodelay: bool = True, jitter: float = 0.0,
                 chunk: int = 65536, buffer: int = 0):
        self.target = (target_host, target_port)
        self.port = free_port()
        self.nodelay = nodelay
        self.jitter = jitter                    # max extra delay of a server->client chunk (s)
        self.chunk = chunk                      # the most one recv takes
        self.buffer = buffer                    # SO_RCVBUF/SO_SNDBUF of the relay's sockets (0: the kernel's)
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._buffers(listener)                 # before listen: accepted sockets take it over
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()

    def refuse(self) -> None:
        """Refuse new connections; those already open go on (a server behind it may close them)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()

    def down(self) -> None:
        """Refuse new connections and cut every open one."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            except OSError:
                pass
            listener.close()
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            self._kill(s)

    close = down

    @staticmethod
    def _kill(s: socket.socket) -> None:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                if self.buffer:                 # set before connecting, so the window is sized by it
                    upstream = socket.socket()
                    self._buffers(upstream)
                    upstream.settimeout(5)
                    upstream.connect(self.target)
                else:
                    upstream = socket.create_connection(self.target, timeout=5)
                if self.nodelay:                # forward each chunk at once, as a router would
                    for s in (client, upstream):
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            if self.jitter > 0:
                self._jittered(upstream, client)
            else:
                threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _buffers(self, s: socket.socket) -> None:
        if self.buffer:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                s.setsockopt(socket.SOL_SOCKET, option, self.buffer)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(self.chunk)
                if not data:
                    break
                self._forward(src, dst, data)
        except OSError:
            pass
        self._end(src, dst)

    def _forward(self, src: socket.socket, dst: socket.socket, data: bytes) -> None:
        """One chunk on its way (a subclass may hold it back: tests/support/stall_proxy.py)."""
        dst.sendall(data)

    def _end(self, src: socket.socket, dst: socket.socket) -> None:
        for s in (src, dst):
            with self._lock:
                self._socks.discard(s)
            self._kill(s)

    def _jittered(self, src: socket.socket, dst: socket.socket) -> None:
        """src -> dst with each chunk held a random 0..jitter s, never overtaking an earlier
        one: a reader stamps each chunk's release time, a writer sends them in order."""
        chunks: queue.SimpleQueue = queue.SimpleQueue()

        def read():
            try:
                while True:
                    data = src.recv(self.chunk)
                    chunks.put((time.monotonic() + random.uniform(0.0, self.jitter), data))
                    if not data:
                        return
            except OSError:
                chunks.put((0.0, b""))

        def write():
            try:
                while True:
                    release, data = chunks.get()
                    if not data:
                        break
                    wait = release - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)        # the link's delay itself, not a synchronisation
                    dst.sendall(data)
            except OSError:
                pass
            self._end(src, dst)

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()
