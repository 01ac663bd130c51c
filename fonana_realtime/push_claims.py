"""Which notification rows have been pushed already (PROTOCOL.md 4.1).

`POST /api/notifications/push` names the row the app just wrote by its content when the
app gives no id. Two likes of one post in the same second write two rows that look
alike; each push must take a different one, on whichever worker or host answers it, so
a row is claimed once: in process with one worker, in Redis (`SET NX EX`) with
`REDIS_URL`. A claim lasts longer than a row stays a candidate (the match window plus a
margin for the clocks of the app's host and ours).
"""
from __future__ import annotations

import math
import time

import redis

from .broker import BrokerUnavailable

MARGIN_SECONDS = 60.0


class MemoryClaims:
    def __init__(self, window_seconds: float, clock=time.monotonic):
        self.seconds = window_seconds + MARGIN_SECONDS
        self.clock = clock
        self._until: dict[str, float] = {}      # row id -> claimed until

    def claim(self, row_id: str) -> bool:
        """True for the first claim of `row_id` (within the claim's lifetime)."""
        now = self.clock()
        if len(self._until) > 10_000:
            self._until = {k: v for k, v in self._until.items() if v > now}
        if self._until.get(row_id, 0.0) > now:
            return False
        self._until[row_id] = now + self.seconds
        return True


class RedisClaims:
    """`<prefix>pushed:<row id>`, set once, expiring on its own."""

    def __init__(self, client, prefix: str, window_seconds: float):
        self.client = client
        self.prefix = prefix
        self.seconds = math.ceil(window_seconds + MARGIN_SECONDS)

    def claim(self, row_id: str) -> bool:
        try:
            return bool(self.client.set(f"{self.prefix}pushed:{row_id}", b"1", nx=True, ex=self.seconds))
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"claim: {type(exc).__name__}") from None


def open_claims(settings, broker):
    """In Redis with REDIS_URL (every worker and host sees them), else in process."""
    client = broker.client
    if settings.redis_url and client is not None:
        return RedisClaims(client, settings.redis_prefix, settings.push_match_seconds)
    return MemoryClaims(settings.push_match_seconds)
