"""What the failover tests share (test_redis_sentinel.py, test_redis_cluster.py): a
publisher over HTTP at a steady rate through both hosts, and reading every frame a client
has been sent."""
from __future__ import annotations

import threading
import time

RATE = 20                   # events/s over both hosts, as issue 21 asks
MAX_EVENTS = 1500           # bounds of the publishing loop: count ...
MAX_SECONDS = 60            # ... and time


class Publisher(threading.Thread):
    """POST /api/events at RATE through both hosts in turn, recording each answer."""

    def __init__(self, servers, channel, rate: float = RATE):
        super().__init__(daemon=True)
        self.servers, self.channel, self.rate = servers, channel, rate
        self.accepted: list[int] = []           # n of each 202, in answer order
        self.refused = 0
        self.stop = threading.Event()
        self.changed = threading.Condition()

    def run(self):
        started = time.monotonic()
        for n in range(MAX_EVENTS):
            if self.stop.is_set() or time.monotonic() - started > MAX_SECONDS:
                break
            srv = self.servers[n % len(self.servers)]
            try:
                r = srv.api("/api/events", {"event": {"type": "tick", "n": n}, "channel": self.channel})
                status = r.status_code
            except Exception:
                status = None
            with self.changed:
                if status == 202:
                    self.accepted.append(n)
                else:
                    assert status in (503, None), f"publish {n}: {status}"
                    self.refused += 1
                self.changed.notify_all()
            self.stop.wait(max(0.0, started + (n + 1) / self.rate - time.monotonic()))   # the rate

    def wait_accepted(self, count: int, timeout: float = 60.0) -> list[int]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.accepted) >= count or not self.is_alive(),
                                         timeout), f"{count} accepted publishes"
            assert len(self.accepted) >= count, f"publishing ended at {len(self.accepted)}"
            return list(self.accepted)


def drain(ws) -> list[dict]:
    """Every frame the client has been sent, up to the answer of a ping sent now."""
    ws.send_json({"type": "ping"})
    frames = []
    while True:
        frame = ws.recv_json(timeout=20)
        if frame.get("type") == "pong":
            return frames
        frames.append(frame)


def ticks(frames) -> list[int]:
    return [(f["data"] if f.get("type") == "event" else f)["n"] for f in frames
            if (f["data"] if f.get("type") == "event" else f).get("type") == "tick"]
