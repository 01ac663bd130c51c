"""What `/ready` says about a Redis broker, and when its pub/sub link counts as silently
dead. Pure logic: the broker feeds it what its listener and its probe saw.

The silent death (centrifugo#1189): after a failover, or behind a middlebox that drops
one direction, the listener's connection stays open and may even answer PING, while
publishes (on other connections) succeed and nothing reaches the listener. Only a
message that goes the whole way shows it: every PROBE_EVERY seconds the worker publishes
a nonce to its own private topic through the command client and expects its listener to
receive it within PROBE_WAIT. A probe that was published but never arrived is a stall:
`/ready` says `broker_stalled`, `fonana_rt_broker_stalls_total` counts it, and the
listener drops its link and builds a new one (resubscribing and catching up from
history, so nothing accepted meanwhile is lost). Detection takes at most
PROBE_EVERY + PROBE_WAIT (4 s); the probe costs each worker one PUBLISH a second.
"""
from __future__ import annotations

PROBE_EVERY = 1.0       # seconds between two probes of a live link
PROBE_WAIT = 3.0        # a published probe not received within this: the link is stalled

OK = "ok"
UNAVAILABLE = "broker_unavailable"      # no link to Redis (connecting, refused, timed out)
CATCHING_UP = "broker_catching_up"      # a new link reads what the old one missed
STALLED = "broker_stalled"              # publishes succeed, nothing arrives: being rebuilt
TIMEOUT = "broker_timeout"              # /ready's own round trip did not come back
# Ready all the same: a Cluster shard is not heard now (its master died, no replica took
# over yet). Every host shares it, so taking them out of a balancer would only refuse the
# other shards' streams too; its topics wait, its publishes answer 503 meanwhile.
SHARDS_MISSING = "broker_shards_missing"


def link_state(*, started: bool, down: bool, subscribed: bool, live: bool, stalled: bool) -> str:
    """The reason `/ready` gives for the listener's link, before its own round trip."""
    if stalled:
        return STALLED
    if not started or down or not subscribed:
        return UNAVAILABLE
    if not live:
        return CATCHING_UP
    return OK


def probe_verdict(published: bool, arrived: bool) -> bool | None:
    """A probe's outcome: True the link works, False it is stalled, None unknown (the
    publish itself failed: Redis is unreachable for commands, which the listener and the
    publishers notice on their own, not a silent death)."""
    if not published:
        return None
    return arrived
