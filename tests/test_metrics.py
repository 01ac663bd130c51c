"""Operator endpoints (PROTOCOL.md 4): `/metrics` (Prometheus text) and `/stats` (JSON).

- Both sit behind WS_API_SECRET unless METRICS_PUBLIC=1 (which opens only them, not /api).
- After known activity the figures move by exactly what happened: connections,
  subscriptions by channel type, frames in/out, events published/delivered, refused
  handshakes by reason, rate-limit hits, and the handshake and delivery histograms.
  (Slow-client closes are counted in tests/test_slow_client.py.)
- With WS_WORKERS=2 and Redis, every worker's figures are summed, whichever worker answers.
"""
from __future__ import annotations

import secrets

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from support.hardening import metric, metric_sum, running_server, scrape, spread_connections
from support.redis_server import SHARED_URL as REDIS_URL
from support.waiting import wait_until
from support.ws import refused_handshake

pytestmark = pytest.mark.postgres

RATE_BURST = 6
MAX_PER_USER = 2
ORIGIN = "https://fonana.me"

FAMILIES = [
    "fonana_rt_connections", "fonana_rt_subscriptions", "fonana_rt_frames_in", "fonana_rt_frames_out",
    "fonana_rt_events_published", "fonana_rt_events_delivered", "fonana_rt_auth_failures",
    "fonana_rt_rate_limited", "fonana_rt_slow_client_closes", "fonana_rt_handshake_seconds",
    "fonana_rt_publish_to_delivery_seconds",
]


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory, pg_url):
    with running_server(tmp_path_factory, "metrics", database_url=pg_url, env={
        "WS_RATE_PER_SEC": 0.2, "WS_RATE_BURST": RATE_BURST, "WS_RATE_ABUSE_SECONDS": 600,
        "WS_MAX_CONNECTIONS_PER_USER": MAX_PER_USER, "ALLOWED_ORIGINS": ORIGIN,
    }) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _idle_metrics_server(request):
    """The tests below count what their own activity moved, from a scrape taken first: a
    connection of the test before (closed by the client at its teardown) that the server
    has not seen end yet would move the gauges in between (-1 connection, -1 subscription)."""
    if "metrics_server" in request.fixturenames:
        srv = request.getfixturevalue("metrics_server")
        wait_until(lambda: metric(scrape(srv), "fonana_rt_connections") == 0, 10,
                   "the connections of the tests before closed")


@pytest.fixture(scope="module")
def public_server(tmp_path_factory, pg_url):
    with running_server(tmp_path_factory, "metrics-public", database_url=pg_url,
                        env={"METRICS_PUBLIC": "1"}) as srv:
        yield srv


# -- access ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/metrics", "/stats"])
def test_operator_endpoints_need_the_api_key(metrics_server, path):
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": metrics_server.api_key}):
        r = metrics_server.get(path, headers=headers)
        assert r.status_code == 401, (headers, r.status_code, r.text[:200])
        assert r.headers.get("content-type", "").startswith("application/json"), r.headers
        assert "fonana_rt_" not in r.text
    r = metrics_server.get(path, headers={"Authorization": f"Bearer {metrics_server.api_key}"})
    assert r.status_code == 200, r.text[:200]


@pytest.mark.parametrize("path", ["/metrics", "/stats"])
def test_metrics_public_serves_them_without_the_key(public_server, path):
    r = public_server.get(path)
    assert r.status_code == 200, r.text[:200]
    assert "fonana_rt_connections" in r.text
    # ... and opens nothing else: the API still wants its key
    assert public_server.api("/api/events", {"event": {"type": "post_deleted", "postId": "p"}},
                             key=None).status_code == 401


def test_metrics_is_prometheus_text_with_every_family(metrics_server, seed):
    # labelled families appear once a label value has been used
    ws = metrics_server.connect(seed.user())
    ws.subscribe({"type": "creator", "id": "families"})
    assert refused_handshake(metrics_server.ws_url).status == 401
    r = metrics_server.get("/metrics", headers={"Authorization": f"Bearer {metrics_server.api_key}"})
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in FAMILIES:
        assert name in families, f"{name} missing from /metrics: {sorted(families)}"
    assert families["fonana_rt_handshake_seconds"].type == "histogram"
    assert families["fonana_rt_publish_to_delivery_seconds"].type == "histogram"
    assert families["fonana_rt_frames_in"].type == "counter"
    assert families["fonana_rt_connections"].type == "gauge"


# -- the figures follow the activity ----------------------------------------------------------------

def _stats(srv) -> dict:
    r = srv.get("/stats", headers={"Authorization": f"Bearer {srv.api_key}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text[:200]
    return r.json()


def test_figures_move_by_exactly_the_activity(metrics_server, seed):
    srv = metrics_server
    a, b, c = seed.user(), seed.user(), seed.user()
    post = seed.post(a)
    before = scrape(srv)
    open_before = metric(before, "fonana_rt_connections")

    # connections: a twice (its limit), b and c once
    a1, a2, b1, c1 = srv.connect(a), srv.connect(a), srv.connect(b), srv.connect(c)
    handshakes_ok = 4
    # subscriptions: one of each type for a1, two more for b1
    for ch in ({"type": "notifications", "userId": a}, {"type": "feed", "userId": a},
               {"type": "creator", "id": "metrics-c"}, {"type": "post", "postId": post}):
        a1.subscribe(ch)
    b1.subscribe({"type": "post", "postId": post})
    b1.subscribe({"type": "creator", "id": "metrics-c"})
    b1.ping()
    commands = 4 + 3
    replies = 5 + 2 + 1                 # subscribed x6 (+ unread_notifications) + pong
    # rate limit: c sends more than its burst at once
    flood = RATE_BURST + 4
    for _ in range(flood):
        c1.send_json({"type": "ping"})
    answers = [c1.recv_json() for _ in range(flood)]
    limited = sum(1 for f in answers if f.get("type") == "error" and f["data"]["code"] == "rate_limited")
    assert limited >= 1 and limited + sum(1 for f in answers if f == {"type": "pong"}) == flood, answers
    commands += flood
    replies += flood
    # events: k to the post channel, held by a1 and b1
    k = 3
    events = [{"type": "post_liked", "postId": post, "userId": b, "likesCount": i} for i in range(k)]
    srv.publish({"events": events})
    for ws in (a1, b1):
        for e in events:
            ws.expect_event(e)
    # refused handshakes, one reason each (plus one more invalid_token)
    refused = {"missing_token": 1, "invalid_token": 2, "expired_token": 1, "unknown_user": 1,
               "origin": 1, "too_many_connections": 1}
    assert refused_handshake(srv.ws_url).status == 401
    assert refused_handshake(srv.url("garbage")).status == 401
    assert refused_handshake(srv.url(srv.token(a) + "x")).status == 401
    assert refused_handshake(srv.url(srv.token(a, exp_in=-3600))).status == 401
    assert refused_handshake(srv.url(srv.token("no-such-user-" + secrets.token_hex(4)))).status == 401
    assert refused_handshake(srv.url(srv.token(b)), origin="https://evil.example").status == 403
    assert refused_handshake(srv.url(srv.token(a))).status == 429

    after = scrape(srv)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert metric(after, "fonana_rt_connections") == open_before + 4
    assert delta("fonana_rt_subscriptions", channel_type="notifications") == 1
    assert delta("fonana_rt_subscriptions", channel_type="feed") == 1
    assert delta("fonana_rt_subscriptions", channel_type="creator") == 2
    assert delta("fonana_rt_subscriptions", channel_type="post") == 2
    assert delta("fonana_rt_frames_in_total") == commands
    # out: the welcome frames, every reply, and each event once per recipient
    assert delta("fonana_rt_frames_out_total") == handshakes_ok + replies + 2 * k
    assert delta("fonana_rt_events_published_total") == k
    assert delta("fonana_rt_events_delivered_total") == 2 * k
    assert delta("fonana_rt_rate_limited_total") == limited
    for reason, n in refused.items():
        assert delta("fonana_rt_auth_failures_total", reason=reason) == n, reason
    assert delta("fonana_rt_handshake_seconds_count") == handshakes_ok
    assert delta("fonana_rt_handshake_seconds_bucket", le="+Inf") == handshakes_ok
    assert delta("fonana_rt_handshake_seconds_sum") > 0
    assert delta("fonana_rt_publish_to_delivery_seconds_count") == k
    assert delta("fonana_rt_publish_to_delivery_seconds_sum") >= 0
    assert metric(after, "fonana_rt_slow_client_closes_total") >= 0

    # /stats: the same figures as JSON
    stats = _stats(srv)
    figures = stats["metrics"]
    assert figures["fonana_rt_connections"] == open_before + 4
    assert figures["fonana_rt_subscriptions{channel_type=post}"] == metric(after, "fonana_rt_subscriptions",
                                                                          channel_type="post")
    assert figures["fonana_rt_auth_failures_total{reason=invalid_token}"] == \
        metric(after, "fonana_rt_auth_failures_total", reason="invalid_token")
    assert figures["fonana_rt_events_published_total"] == metric(after, "fonana_rt_events_published_total")
    assert stats["worker"]["connections"] == open_before + 4

    # closing gives back what was held
    for ws in (a1, a2, b1, c1):
        ws.close()
    wait_until(lambda: metric(scrape(srv), "fonana_rt_connections") == open_before, 10, "connections back")
    end = scrape(srv)
    for kind in ("notifications", "feed", "creator", "post"):
        assert metric(end, "fonana_rt_subscriptions", channel_type=kind) == \
            metric(before, "fonana_rt_subscriptions", channel_type=kind), kind


def test_unsubscribe_moves_the_subscription_gauge(metrics_server, seed):
    srv = metrics_server
    u = seed.user()
    ws = srv.connect(u)
    ws.subscribe({"type": "creator", "id": "gauge-1"})
    held = metric(scrape(srv), "fonana_rt_subscriptions", channel_type="creator")
    ws.unsubscribe({"type": "creator", "id": "gauge-1"})
    ws.unsubscribe({"type": "creator", "id": "gauge-1"})        # idempotent: no second decrement
    assert metric(scrape(srv), "fonana_rt_subscriptions", channel_type="creator") == held - 1


# -- several workers ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, pg_url):
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:  # pragma: no cover - environment
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    prefix = f"fonana:test:metrics:{secrets.token_hex(4)}:"
    with running_server(tmp_path_factory, "metrics-2w", database_url=pg_url, env={
        "REDIS_URL": REDIS_URL, "REDIS_PREFIX": prefix, "WS_WORKERS": 2,
        "WS_MAX_CONNECTIONS_PER_USER": 100}) as srv:
        yield srv


def test_figures_are_summed_across_workers(two_workers, seed):
    srv = two_workers
    u = seed.user()
    before = scrape(srv)
    by_worker = spread_connections(srv, u, workers=2, seconds=30)
    conns = [ws for group in by_worker.values() for ws in group]
    assert len(by_worker) == 2
    channel = {"type": "creator", "id": "agg-" + secrets.token_hex(3)}
    for ws in conns:
        ws.subscribe(channel)
        ws.ping()
    event = {"type": "creator_updated", "creatorId": channel["id"], "data": {"n": 1}}
    srv.publish({"event": event})
    for ws in conns:
        ws.expect_event(event)
    n = len(conns)
    extra = metric(before, "fonana_rt_connections")

    def summed():
        # whichever worker answers, it reports every worker's figures
        s = scrape(srv)
        return (metric(s, "fonana_rt_connections") == extra + n
                and metric(s, "fonana_rt_subscriptions", channel_type="creator")
                == metric(before, "fonana_rt_subscriptions", channel_type="creator") + n
                and s)
    # spare connections opened while spreading are released asynchronously
    wait_until(summed, 15, "connections summed over both workers")
    for _ in range(6):                 # several scrapes: each may be served by either worker
        s = scrape(srv)

        def d(name, s=s):
            return metric_sum(s, name) - metric_sum(before, name)
        assert metric(s, "fonana_rt_connections") == extra + n, (metric(s, "fonana_rt_connections"), extra, n)
        assert d("fonana_rt_events_delivered_total") == n, (d("fonana_rt_events_delivered_total"), n)
        assert d("fonana_rt_events_published_total") == 1, d("fonana_rt_events_published_total")
        assert d("fonana_rt_frames_in_total") == 2 * n, (d("fonana_rt_frames_in_total"), n)
        stats = _stats(srv)
        assert stats["metrics"]["fonana_rt_connections"] == extra + n, stats
        # "worker" is the answering worker's own view: its share, not the sum
        assert stats["worker"]["connections"] in {len(group) for group in by_worker.values()}, \
            (stats["worker"], {pid: len(group) for pid, group in by_worker.items()})
