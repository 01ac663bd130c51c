"""Prometheus metrics, aggregated across gunicorn workers.

gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a fresh directory before any
worker starts, so prometheus-client keeps each worker's values in files there and
`/metrics` sums them. Counters on the delivery path are bumped once per event with
the recipient count, never once per recipient; values stepped per connection or per batch
go through `step`/`observe`, which add them up per loop turn (`Tally`).
"""
from __future__ import annotations

import math
import os
from bisect import bisect_left

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)
from prometheus_client import multiprocess

from . import turn_end

CONNECTIONS = Gauge("fonana_rt_connections", "Open WebSocket connections",
                    multiprocess_mode="livesum")
SUBSCRIPTIONS = Gauge("fonana_rt_subscriptions", "Channel subscriptions held, by channel type",
                      ["channel_type"], multiprocess_mode="livesum")
FRAMES_IN = Counter("fonana_rt_frames_in", "Frames received from clients")
FRAMES_OUT = Counter("fonana_rt_frames_out", "Text frames (replies and events) handed to client sockets")
EVENTS_PUBLISHED = Counter("fonana_rt_events_published", "Events accepted for publishing")
EVENTS_DELIVERED = Counter("fonana_rt_events_delivered", "Event frames delivered to connections")
DELIVERIES_DROPPED = Counter("fonana_rt_deliveries_dropped", "Event frames not delivered (connection closing or overflowing)")
AUTH_FAILURES = Counter("fonana_rt_auth_failures", "Refused handshakes, by reason", ["reason"])
RATE_LIMITED = Counter("fonana_rt_rate_limited", "Commands refused by the per-connection rate limit")
CONTROL_CALLS = Counter("fonana_rt_control_calls", "Operator calls answered (PROTOCOL.md 9), by call",
                        ["call"])   # disconnect, unsubscribe, revoke, unrevoke
OPERATOR_CLOSES = Counter("fonana_rt_operator_closes",
                          "Connections closed by an operator's call (4010) or a revocation (4011)", ["why"])
SLOW_CLIENT_CLOSES = Counter("fonana_rt_slow_client_closes", "Connections closed with 4009")
BROKER_PUBLISHED = Counter("fonana_rt_broker_published", "Messages published to the broker")
BROKER_RECEIVED = Counter("fonana_rt_broker_received", "Messages received from the broker")
BROKER_RECONNECTS = Counter("fonana_rt_broker_reconnects", "Broker listener reconnects")
BROKER_TOPICS = Gauge("fonana_rt_broker_topics", "Broker topics this worker listens to",
                      multiprocess_mode="livesum")
BROKER_STALLS = Counter("fonana_rt_broker_stalls",
                        "Pub/sub links found silently dead (a probe published but never received) and rebuilt")
BROKER_STALLED = Gauge("fonana_rt_broker_stalled", "Workers whose pub/sub link is stalled now",
                       multiprocess_mode="livesum")
BROKER_LINK_DOWN = Gauge("fonana_rt_broker_link_down",
                         "Workers without a Redis pub/sub link now, or (Cluster) without one shard's",
                         multiprocess_mode="livesum")
BROKER_CATCHING_UP = Gauge("fonana_rt_broker_catching_up",
                           "Workers whose new Redis link is still catching up from history (live events held)",
                           multiprocess_mode="livesum")
BROKER_CATCHUP_EVENTS = Counter("fonana_rt_broker_catchup_events",
                                "Events a worker read from Redis history after its listener's link came back")
BROKER_CATCHUP_FAILED = Counter("fonana_rt_broker_catchup_failed",
                                "Streams whose missed events were no longer in history when the link came back",
                                ["reason"])
RECOVERIES = Counter("fonana_rt_recoveries", "Recoveries asked for (subscribe with since, recover), by result",
                     ["result"])   # succeeded, or the failure reason: epoch, trimmed, expired, too_many, ahead, unavailable
REPLAYED_EVENTS = Counter("fonana_rt_replayed_events", "Events sent to clients by a recovery")
HISTORY_BYTES = Gauge("fonana_rt_history_bytes", "Memory held by the in-process history (estimate)",
                      multiprocess_mode="livesum")
HISTORY_EVENTS = Gauge("fonana_rt_history_events", "Events held by the in-process history",
                       multiprocess_mode="livesum")
HISTORY_STREAMS = Gauge("fonana_rt_history_streams",
                        "Streams with a meta in the in-process history (ghosts nobody published to included)",
                        multiprocess_mode="livesum")
HISTORY_EVICTED = Counter("fonana_rt_history_evicted",
                          "In-process history evicted to stay within WS_HISTORY_MAX_STREAMS / _BYTES, by what",
                          ["what"])   # stream (a meta, with its events) or event
FRAMES_HELD = Counter("fonana_rt_legacy_frames_held",
                      "Event frames to legacy connections written later than they arrived (pacing)")
FRAMES_REPLACED = Counter("fonana_rt_legacy_frames_replaced",
                          "Waiting event frames to legacy connections replaced by a newer one (pacing)")
LEGACY_RESUMES = Counter("fonana_rt_legacy_resumes",
                         "Streams a new legacy connection resumed where a dropped one left off, by result",
                         ["result"])   # replayed, or why nothing was: epoch, trimmed, expired, too_many, ahead, unavailable
LEGACY_REPLAYED_EVENTS = Counter("fonana_rt_legacy_replayed_events",
                                 "Events replayed to legacy connections by an automatic resume")
HOLD_SECONDS = Histogram("fonana_rt_legacy_hold_seconds",
                         "How long each held event frame to a legacy connection waited before it was written",
                         buckets=(.005, .01, .02, .05, .075, .1, .125, .15, .2, .3, .5, 1, 2, 4, 8))
HANDSHAKE_SECONDS = Histogram("fonana_rt_handshake_seconds", "Handshake time (auth + upgrade)",
                              buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
DELIVERY_SECONDS = Histogram("fonana_rt_publish_to_delivery_seconds",
                             "From publish accepted to frames handed to sockets",
                             buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))


_subscriptions_by_kind: dict = {}


def subscriptions(kind: str):
    """SUBSCRIPTIONS' value for one channel kind (a fixed, small set), looked up once:
    `labels` takes a lock and hashes its arguments on every call."""
    child = _subscriptions_by_kind.get(kind)
    if child is None:
        child = _subscriptions_by_kind[kind] = SUBSCRIPTIONS.labels(kind)
    return child


def unsubscribed(key: str) -> None:
    """One held channel let go (by its key: the kind is what comes before the first `_`)."""
    step(subscriptions(key.partition("_")[0]), -1)


class BatchedHistogram:
    """Observations of one Histogram counted in process and added in one go.

    `Histogram.observe` costs ~4 us in multiprocess mode (an inc costs ~2.7): once per
    held frame that was ~0.3 s of CPU a second for 5,000 clients of a hot post. `add`
    costs a bisect; `flush` adds each bucket's count with one inc. It writes the
    histogram's own per-bucket values (`_buckets`, `_sum`: prometheus-client 0.26,
    pinned; tests/unit/test_pacing.py checks the exposition) exactly as `observe` would.
    """

    def __init__(self, histogram):
        self.histogram = histogram
        self.bounds = list(histogram._upper_bounds)     # ends with +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def add(self, value: float):
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self):
        if not self.total and not any(self.counts):
            return
        h = self.histogram
        for i, n in enumerate(self.counts):
            if n:
                h._buckets[i].inc(n)
                self.counts[i] = 0
        h._sum.inc(self.total)
        self.total = 0.0


class Tally:
    """Steps of counters and gauges (or their labelled children) and observations of
    histograms, added up in process and written together at the end of the loop turn
    (turn_end): one write per value per turn instead of one per step. The exposition is
    the same as with each step written at once, a turn later at most.

    `step(metric, amount)`: a counter's amount must not be negative (as with `inc`); a
    gauge's may (a `dec`)."""

    def __init__(self):
        self.steps: dict = {}
        self.histograms: dict = {}        # Histogram -> BatchedHistogram
        self.pending = False

    def step(self, metric, amount: float = 1) -> None:
        steps = self.steps
        steps[metric] = steps.get(metric, 0) + amount
        if not self.pending:
            self._schedule()

    def observe(self, histogram, value: float) -> None:
        batch = self.histograms.get(histogram)
        if batch is None:
            batch = self.histograms[histogram] = BatchedHistogram(histogram)
        batch.add(value)
        if not self.pending:
            self._schedule()

    def _schedule(self):
        self.pending = turn_end.later(self.flush)
        if not self.pending:
            self.flush()

    def flush(self) -> None:
        self.pending = False
        steps, self.steps = self.steps, {}
        for metric, amount in steps.items():
            if amount:
                metric.inc(amount)
        for batch in self.histograms.values():
            batch.flush()


_TALLY = Tally()
step = _TALLY.step            # metrics.step(metrics.CONNECTIONS), metrics.step(metrics.CONNECTIONS, -1)
observe = _TALLY.observe      # metrics.observe(metrics.HANDSHAKE_SECONDS, seconds)


def render() -> tuple[bytes, str]:
    """The exposition text: every worker's values when running under gunicorn."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def snapshot() -> dict:
    """The same figures as a flat JSON object for /stats."""
    from prometheus_client.parser import text_string_to_metric_families
    text, _ = render()
    out: dict = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket")):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "pid")
            # JSON has no NaN/Infinity: such a value is written as its name
            value = sample.value if math.isfinite(sample.value) else str(sample.value)
            out[sample.name + (f"{{{labels}}}" if labels else "")] = value
    return out


def own_total(metric) -> float:
    """This process's own value of a counter, summed over its labels (the operator page's
    per-worker figures, presence.py); /metrics sums every worker's."""
    children = getattr(metric, "_metrics", None)
    if metric._labelnames:
        return sum(child._value.get() for child in list((children or {}).values()))
    return metric._value.get()
