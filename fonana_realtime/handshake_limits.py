"""Limits applied before a WebSocket upgrade: client IP, handshakes per IP."""
from __future__ import annotations

import ipaddress
import time


def client_ip(environ, trusted_proxies) -> str:
    """The socket peer, or the last untrusted hop of X-Forwarded-For when the peer
    is a trusted proxy (nginx appends the address it saw)."""
    peer = environ.get("REMOTE_ADDR", "") or ""
    if not trusted_proxies or not _trusted(peer, trusted_proxies):
        return peer
    hops = [h.strip() for h in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted_proxies):
            return hop
    return hops[0] if hops else peer


def _trusted(addr: str, trusted) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    for net in trusted:
        try:
            if ip in ipaddress.ip_network(net, strict=False):
                return True
        except ValueError:
            continue
    return False


class HandshakeRate:
    """A token bucket per client IP; rate 0 disables it. Idle buckets are pruned."""

    def __init__(self, per_sec: float, burst: int, max_ips: int = 100_000):
        self.per_sec = per_sec
        self.burst = float(burst)
        self.max_ips = max_ips
        self.buckets: dict[str, list[float]] = {}

    def allow(self, ip: str, now: float | None = None) -> bool:
        if self.per_sec <= 0:
            return True
        now = time.monotonic() if now is None else now
        bucket = self.buckets.get(ip)
        if bucket is None:
            if len(self.buckets) >= self.max_ips:
                self._prune(now)
            bucket = self.buckets[ip] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.per_sec)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _prune(self, now: float):
        full_after = self.burst / self.per_sec
        self.buckets = {ip: b for ip, b in self.buckets.items() if now - b[1] < full_after}
