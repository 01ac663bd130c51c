"""How long the Redis listener waits before it tries again: a whole link that could not be
built, or (Cluster) a shard's connection that could not. Exponential, capped, jittered."""
from __future__ import annotations

import random

BACKOFF_BASE, BACKOFF_CAP = 0.1, 1.0


def backoff_delay(attempt: int) -> float:
    """Exponential, capped, with jitter in the upper half (never a synchronised herd)."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(attempt, 16)))
    return random.uniform(ceiling / 2, ceiling)
