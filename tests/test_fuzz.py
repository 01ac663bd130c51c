"""Property tests: whatever a client or a publisher sends, the server answers in protocol
and keeps serving (PROTOCOL.md 2.2: a bad frame costs an `error`, never the connection;
section 4: a bad body is a 4xx with JSON, never a 500).

The WebSocket property runs over ONE live connection: after every example a barrier
command (an `unsubscribe` of a unique channel, always answered with `unsubscribed`) marks
the end of the replies to that example, so each example's replies are known exactly.
"""
from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.hardening import running_server

pytestmark = pytest.mark.postgres

ALLOWED_REPLIES = {"error", "subscribed", "unsubscribed", "pong", "unread_notifications", "authenticated"}
ERROR_CODES = {"access_denied", "invalid_channel", "unavailable", "too_many_subscriptions", "invalid_message",
               "unknown_type", "rate_limited", "token_expired", "invalid_token"}
EXAMPLES = 150


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, pg_url):
    # the property sends hundreds of commands in a few seconds: no rate limit here
    with running_server(tmp_path_factory, "fuzz", database_url=pg_url, env={
        "WS_RATE_PER_SEC": 1_000_000, "WS_RATE_BURST": 1_000_000}) as srv:
        yield srv


@pytest.fixture(scope="module")
def fuzz_user(seed):
    return seed.user()


@pytest.fixture(scope="module")
def fuzz_post(seed, fuzz_user):
    return seed.post(fuzz_user)


@pytest.fixture(scope="module")
def live(fuzz_server, fuzz_user):
    """The one connection every WebSocket example goes through."""
    ws = fuzz_server.connect(fuzz_user, max_queue=None)
    fuzz_server.clients.remove(ws)        # not closed between tests: it spans the module
    state = {"ws": ws, "examples": 0}
    yield state
    ws.close()


# -- strategies ---------------------------------------------------------------------------------
# Biased towards well-formed commands (so subscribe/auth/publish paths are reached, not only
# the parser), with every field also drawn from arbitrary JSON.

text = st.text(st.characters(codec="utf-8"), max_size=40)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(text, children, max_size=4), max_leaves=12)
extras = st.dictionaries(text, json_values, max_size=2)
NOTIFICATION_TYPES = ["LIKE_POST", "COMMENT_POST", "NEW_SUBSCRIBER", "SYSTEM_ANNOUNCEMENT", "TIP_RECEIVED"]


def good_ids(user, post):
    return st.sampled_from([user, post]) | st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True)


def ids(user, post):
    return good_ids(user, post) | st.sampled_from(["", "x" * 129, "a b", "../etc", "post_1", "ок", "a\n"]) \
        | text | json_values


def channels(user, post):
    good, ident = good_ids(user, post), ids(user, post)
    well_formed = st.one_of(
        st.builds(lambda i: {"type": "notifications", "userId": i}, st.just(user) | good),
        st.builds(lambda i: {"type": "feed", "userId": i}, st.just(user) | good),
        st.builds(lambda i: {"type": "creator", "id": i}, good),
        st.builds(lambda i: {"type": "post", "postId": i}, st.just(post) | good),
    )
    return st.one_of(
        well_formed,
        st.builds(lambda c, e: {**e, **c}, well_formed, extras),              # extra fields
        st.builds(lambda c, k, v: {**c, k: v}, well_formed, st.sampled_from(["type", "userId", "id", "postId"]),
                  json_values),                                               # one field replaced
        st.fixed_dictionaries({"type": text}, optional={"userId": ident, "id": ident, "postId": ident}),
        st.sampled_from([f"post_{post}", f"notifications_{user}", "creator_x", "nope"]),
        json_values,
    )


def commands(user, post, token):
    ch = channels(user, post)
    return st.one_of(
        st.builds(lambda c: {"type": "subscribe", "channel": c}, ch),
        st.builds(lambda c: {"type": "unsubscribe", "channel": c}, ch),
        st.builds(lambda e: {"type": "ping", **{k: v for k, v in e.items() if k != "type"}}, extras),
        st.builds(lambda t: {"type": "auth", "token": t},
                  st.sampled_from([token, "x.y.z", "", token + "x", token[:-3]]) | text | json_values),
        st.builds(lambda e: {"type": "auth", **{k: v for k, v in e.items() if k != "type"}}, extras),
        st.fixed_dictionaries({"type": st.sampled_from(["subscribe", "unsubscribe", "ping", "auth"]) | text},
                              optional={"channel": ch, "token": json_values, "data": json_values}),
        st.builds(lambda e, t: {**e, "type": t}, extras, json_values),
    )


def frames(user, post, token):
    """(kind, payload): JSON commands (most), other JSON, text that is not JSON, binary."""
    cmd = commands(user, post, token).map(lambda c: ("text", json.dumps(c, ensure_ascii=False)))
    return st.one_of(
        cmd, cmd, cmd,
        json_values.map(lambda v: ("text", json.dumps(v))),
        text.map(lambda t: ("text", t)),
        st.binary(max_size=64).map(lambda b: ("binary", b)),
    )


def _replies_until_barrier(ws, marker: str) -> list:
    """Frames up to (not including) the barrier's `unsubscribed`; fails on a close."""
    out = []
    while True:
        frame = ws.recv_json(timeout=5)
        if (isinstance(frame, dict) and frame.get("type") == "unsubscribed"
                and isinstance(frame.get("data"), dict) and frame["data"].get("channelKey") == f"creator_{marker}"):
            return out
        out.append(frame)


def _check_replies(sent, replies):
    assert replies, f"no reply to {sent!r}"
    for frame in replies:
        assert isinstance(frame, dict) and frame.get("type") in ALLOWED_REPLIES, (sent, frame)
        if frame["type"] == "error":
            data = frame.get("data")
            assert isinstance(data, dict) and data.get("code") in ERROR_CODES, (sent, frame)
            assert isinstance(data.get("message"), str) and data["message"], (sent, frame)
    if len(replies) > 1:   # only a subscribe to one's own notifications is answered twice
        assert len(replies) == 2, (sent, replies)
        assert replies[0]["type"] == "subscribed" and replies[0]["data"]["channelKey"].startswith("notifications_"), \
            (sent, replies)
        assert replies[1]["type"] in ("unread_notifications", "error"), (sent, replies)


# -- WebSocket: one live connection -------------------------------------------------------------

def test_random_frames_over_one_connection_each_get_an_allowed_reply(live, fuzz_server, fuzz_user, fuzz_post):
    strategy = frames(fuzz_user, fuzz_post, fuzz_server.token(fuzz_user, exp_in=3600))

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(frame=strategy)
    def prop(frame):
        ws = live["ws"]
        kind, payload = frame
        marker = "barrier-" + uuid.uuid4().hex
        if kind == "binary":
            ws.send_bytes(payload)
        else:
            ws.send_text(payload)
        ws.send_json({"type": "unsubscribe", "channel": {"type": "creator", "id": marker}})
        _check_replies(frame, _replies_until_barrier(ws, marker))
        live["examples"] += 1

    prop()


def _nested(depth: int) -> str:
    """JSON text of `depth` nested arrays/objects, built as text (json.dumps of such a
    value would itself hit the recursion limit in the test process)."""
    opens = "".join('{"k":' if i % 2 else "[" for i in range(depth))
    closes = "".join("}" if i % 2 else "]" for i in reversed(range(depth)))
    return opens + '"x"' + closes


@pytest.mark.parametrize("depth", [1, 10, 60, 63, 64, 65, 66, 100, 500, 900, 950, 970, 980, 990, 995, 1000, 1100, 5000])
def test_deeply_nested_frames_are_answered_not_fatal(live, depth):
    ws = live["ws"]
    deep = _nested(depth)
    sent = [
        '{"type":"ping","x":%s}' % deep,
        '{"type":"subscribe","channel":{"type":"creator","id":"deep","extra":%s}}' % deep,
        '{"type":"unsubscribe","channel":{"type":"creator","id":"deep","extra":%s}}' % deep,
        '{"type":"subscribe","channel":%s}' % deep,
        deep,
    ]
    assert all(len(text) <= 65536 for text in sent)
    for text in sent:
        marker = "barrier-" + uuid.uuid4().hex
        ws.send_text(text)
        ws.send_json({"type": "unsubscribe", "channel": {"type": "creator", "id": marker}})
        _check_replies(text[:200], _replies_until_barrier(ws, marker))
    # a bare deep array: not JSON the server can take, but one error, not a close
    marker = "barrier-" + uuid.uuid4().hex
    ws.send_text("[" * min(depth, 60000))
    ws.send_json({"type": "unsubscribe", "channel": {"type": "creator", "id": marker}})
    replies = _replies_until_barrier(ws, marker)
    assert [r["data"]["code"] for r in replies] == ["invalid_message"], replies


def test_after_the_fuzz_the_connection_and_the_server_still_serve(live, fuzz_server, fuzz_user):
    assert live["examples"] >= EXAMPLES * 0.9, f"only {live['examples']} examples ran"
    ws = live["ws"]
    assert ws.is_open
    ws.send_json({"type": "ping"})
    ws.expect_type("pong")
    assert fuzz_server.get("/health").status_code == 200
    fresh = fuzz_server.connect(fuzz_user)
    fresh.ping()


# -- HTTP API ---------------------------------------------------------------------------------------

def api_requests(user, post):
    """(path, body bytes), mostly shaped like the real calls with fields drawn at random."""
    good, ident = good_ids(user, post), ids(user, post)
    counts = st.integers(-5, 10**6) | json_values
    words = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=30)
    good_event = st.one_of(
        st.fixed_dictionaries({"type": st.just("post_liked"), "postId": good, "userId": good, "likesCount": counts}),
        st.fixed_dictionaries({"type": st.just("comment_added"), "postId": good, "comment": json_values}),
        st.fixed_dictionaries({"type": st.just("creator_updated"), "creatorId": good, "data": json_values}),
        st.fixed_dictionaries({"type": st.just("notification"), "userId": good, "notification": json_values}),
        st.fixed_dictionaries({"type": st.just("feed_update"), "userId": good, "posts": json_values}),
        st.fixed_dictionaries({"type": st.just("new_post_from_subscription"), "post": json_values}),
    )
    event = st.one_of(
        good_event, good_event,
        st.builds(lambda e, k, v: {**e, k: v}, good_event,
                  st.sampled_from(["type", "postId", "userId", "creatorId", "likesCount"]), json_values),
        st.builds(lambda e, x: {**x, **e}, good_event, extras),
        st.fixed_dictionaries({"type": text | json_values}, optional={"postId": ident, "userId": ident}),
        json_values,
    )
    address = st.fixed_dictionaries({}, optional={"channel": channels(user, post), "userId": ident})
    events_body = st.one_of(
        st.builds(lambda e, a: {"event": e, **a}, event, address),
        st.builds(lambda es, a: {"events": es, **a}, st.lists(event, max_size=5), address),
        st.fixed_dictionaries({}, optional={"event": json_values, "events": json_values, "channel": json_values}),
    )
    notification_body = st.fixed_dictionaries(
        {"userId": st.just(user) | ident, "type": st.sampled_from(NOTIFICATION_TYPES) | text | json_values,
         "title": words | text | json_values, "message": words | text | json_values},
        optional={"metadata": json_values})
    read_body = st.fixed_dictionaries({"userId": st.just(user) | ident, "notificationId": ident})
    clear_body = st.fixed_dictionaries({"userId": st.just(user) | ident})

    def enc(strategy):
        return strategy.map(lambda b: json.dumps(b, ensure_ascii=False).encode())
    junk = enc(json_values) | st.binary(max_size=200)
    return st.one_of(
        st.tuples(st.just("/api/events"), enc(events_body)),
        st.tuples(st.just("/api/events"), enc(events_body)),
        st.tuples(st.just("/api/notifications"), enc(notification_body)),
        st.tuples(st.just("/api/notifications/read"), enc(read_body)),
        st.tuples(st.just("/api/notifications/clear"), enc(clear_body)),
        st.tuples(st.sampled_from(API_PATHS), junk),
    )


API_PATHS = ["/api/events", "/api/notifications", "/api/notifications/read", "/api/notifications/clear"]


def test_random_http_bodies_never_cause_a_500(fuzz_server, fuzz_user, fuzz_post):
    seen: dict = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request=api_requests(fuzz_user, fuzz_post))
    def prop(request):
        path, body = request
        r = fuzz_server.api(path, raw=body)
        assert r.status_code < 500, (path, body[:300], r.status_code, r.text[:300])
        assert r.status_code in (200, 201, 202, 400, 404, 413), (path, body[:300], r.status_code, r.text[:300])
        assert r.headers.get("content-type", "").startswith("application/json"), (path, r.headers)
        assert isinstance(r.json(), dict)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1

    prop()
    assert seen.get(400) and seen.get(202), seen    # reached both the validators and the publisher
    assert fuzz_server.get("/health").status_code == 200


@pytest.mark.parametrize("raw", [
    b"[" * 100_000,
    b'{"event":' * 50_000,
    ('{"event":{"type":"creator_updated","creatorId":"c1","data":%s}}' % _nested(900)).encode(),
    ('{"events":[{"type":"creator_updated","creatorId":"c1","data":%s}]}' % _nested(70)).encode(),
    ('{"userId":"u1","type":"SYSTEM_ANNOUNCEMENT","title":"t","message":"m","metadata":{"deep":%s}}'
     % _nested(950)).encode(),
], ids=["deep_array", "deep_objects", "event_900_deep", "list_item_70_deep", "metadata_950_deep"])
def test_deeply_nested_http_bodies_are_400_json(fuzz_server, raw):
    for path in ("/api/events", "/api/notifications"):
        r = fuzz_server.api(path, raw=raw)
        assert r.status_code == 400, (path, r.status_code, r.text[:300])
        assert r.json().get("error") == "bad_request", r.text[:300]
    assert fuzz_server.get("/health").status_code == 200
