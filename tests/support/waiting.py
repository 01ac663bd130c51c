"""The suite's one poll with a deadline, for state a server exposes only by polling
(a counter in /metrics, a freed connection slot, a database coming back).

Where an event can be awaited (a frame, a process exit), await it instead.
"""
from __future__ import annotations

import time


def wait_until(predicate, timeout: float = 10.0, what: str = "condition", interval: float = 0.05):
    """Poll `predicate()` until it returns something truthy (returned), or fail after
    `timeout` seconds with the last answer or problem. An exception inside `predicate`
    (an assertion, a refused connection during an outage) counts as "not yet"; use
    pytest.fail for answers that must stop the wait at once. The pause between attempts
    only paces a poll with a deadline, never synchronises."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout}s (last: {last!r})")
        time.sleep(interval)
