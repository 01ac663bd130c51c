"""A client that stops reading (DESIGN.md "Nothing on the delivery path waits on a slow
client"; PROTOCOL.md 2.5 close 4009).

A raw socket with a small receive buffer completes the handshake, subscribes to a post
channel and never reads again. Events are published to that channel in rounds; a normal
subscriber on the same channel reads each round completely before the next is sent.
The server must close the slow one once its send backlog (WS_SEND_BACKLOG_BYTES /
WS_SEND_BACKLOG_FRAMES, small here) overflows, count it in /metrics, keep delivering to
the normal subscriber every event in order, and answer every publish with 202. When the
slow client reads again (within the close deadline) it finds whole frames, then the 4009
close frame.
"""
from __future__ import annotations

import json
import time

import pytest

from support.hardening import metric, raw_connect, running_server, scrape
from support.waiting import wait_until
from support.rawws import OP_CLOSE, OP_TEXT

pytestmark = pytest.mark.postgres

BACKLOG_BYTES = 65536
BACKLOG_FRAMES = 64
MAX_ROUNDS = 150          # bounds the publishing, whatever happens


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory, pg_url):
    with running_server(tmp_path_factory, "slow", database_url=pg_url, env={
        "WS_SEND_BACKLOG_BYTES": BACKLOG_BYTES,
        "WS_SEND_BACKLOG_FRAMES": BACKLOG_FRAMES,
    }) as srv:
        yield srv


@pytest.fixture
def post(seed):
    author = seed.user()
    return seed.post(author)           # an open post: anyone may subscribe


def _drain_raw(raw, timeout: float = 15.0) -> tuple[list, str]:
    """Everything the server left for the raw client, until EOF or reset. Returns the
    complete text frames and how the stream ended."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("the slow client's socket neither ended nor reset")
        try:
            op, payload = raw.recv_frame(remaining)
        except EOFError:
            return frames, "eof"            # includes a frame cut off by the close
        except (ConnectionResetError, BrokenPipeError):
            return frames, "reset"
        except TimeoutError:
            raise AssertionError("the slow client's socket neither ended nor reset") from None
        if op == OP_TEXT:
            frames.append(json.loads(payload))
        elif op == OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            assert code == 4009, f"close {code} sent to a slow client"
            frames.append({"close": code})
            try:
                raw.send_frame(OP_CLOSE, payload[:2])     # answer it, as a browser does
            except OSError:
                pass


def _run_until_slow_client_closed(srv, normal, make_events, per_round):
    """Publish rounds of events until /metrics counts a slow-client close. The normal
    subscriber reads each round in full before the next. Returns all events published."""
    samples = scrape(srv)
    before = (metric(samples, "fonana_rt_slow_client_closes_total"),
              metric(samples, "fonana_rt_deliveries_dropped_total"))
    published = []
    for n in range(MAX_ROUNDS):
        events = make_events(n, per_round)
        r = srv.api("/api/events", {"events": events})
        assert r.status_code == 202, f"publisher saw {r.status_code} {r.text[:300]} in round {n}"
        published.extend(events)
        for e in events:
            normal.expect_event(e, timeout=10)
        if metric(scrape(srv), "fonana_rt_slow_client_closes_total") > before[0]:
            return published, before
    raise AssertionError(f"no slow-client close after {MAX_ROUNDS} rounds ({len(published)} events)")


def _check_slow_client_end(srv, raw, published, before):
    frames, how = _drain_raw(raw)
    # the close code reaches the client: after the frames it was sent, the 4009 close frame
    # (the frame in flight is finished first; frames never started are dropped)
    assert frames and frames[-1] == {"close": 4009}, \
        f"no 4009 close frame at the end of the stream (ended by {how}; " \
        f"last: {[f.get('close') or (f.get('comment') or f.get('notification') or {}).get('id') for f in frames[-3:]]})"
    events = [f for f in frames if "close" not in f]
    # what it did get is the start of what was published, in order, each at most once
    assert events == published[:len(events)], "the slow client got events out of order or torn"
    assert len(events) < len(published), "the slow client got every event: it was never slow"
    assert how in ("eof", "reset")
    # exactly one slow client was cut, and the server let go of its connection
    samples = scrape(srv)
    closes_before, dropped_before = before
    assert metric(samples, "fonana_rt_slow_client_closes_total") == closes_before + 1
    # the frame that overflowed the backlog, at least, was counted as dropped
    assert metric(samples, "fonana_rt_deliveries_dropped_total") > dropped_before
    wait_until(lambda: metric(scrape(srv), "fonana_rt_connections") == 1, 10,
               "the slow client's connection released")


@pytest.mark.parametrize("size,per_round", [(4000, 20), (60, 400)], ids=["big_events_bytes_limit",
                                                                         "small_events_frames_limit"])
def test_slow_client_is_closed_and_others_get_every_event(slow_server, seed, post, size, per_round):
    slow_user, normal_user = seed.user(), seed.user()
    channel = {"type": "post", "postId": post}
    raw = raw_connect(slow_server, slow_server.token(slow_user), rcvbuf=4096)
    try:
        raw.send_json({"type": "subscribe", "channel": channel})
        raw.recv_json_until("subscribed")
        # from here on the raw client does not read
        normal = slow_server.connect(normal_user, max_queue=None)
        normal.subscribe(channel)

        def make_events(n, k):
            return [{"type": "comment_added", "postId": post,
                     "comment": {"id": f"c{n}-{i}", "userId": normal_user, "content": "x" * size,
                                 "createdAt": "2025-07-01T12:00:00.000Z"}} for i in range(k)]

        published, before = _run_until_slow_client_closed(slow_server, normal, make_events, per_round)
        _check_slow_client_end(slow_server, raw, published, before)
        # the normal subscriber is unharmed and still subscribed
        normal.barrier()
        last = make_events(10**6, 1)
        assert slow_server.api("/api/events", {"event": last[0]}).status_code == 202
        normal.expect_event(last[0])
    finally:
        raw.close()


def test_user_addressed_events_also_drop_a_slow_client(slow_server, seed):
    """The same through the user route (notification events), not a channel."""
    slow_user = seed.user()
    raw = raw_connect(slow_server, slow_server.token(slow_user), rcvbuf=4096)
    try:
        normal = slow_server.connect(slow_user, max_queue=None)   # same user, reading

        def make_events(n, k):
            return [{"type": "notification", "userId": slow_user,
                     "notification": {"id": f"n{n}-{i}", "userId": slow_user, "type": "SYSTEM_ANNOUNCEMENT",
                                      "title": "t", "message": "y" * 3000, "isRead": False, "metadata": None,
                                      "createdAt": "2025-07-01T12:00:00.000Z"}} for i in range(k)]

        published, before = _run_until_slow_client_closed(slow_server, normal, make_events, 20)
        _check_slow_client_end(slow_server, raw, published, before)
        normal.ping()
    finally:
        raw.close()
