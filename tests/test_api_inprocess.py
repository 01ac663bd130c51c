"""The HTTP API's validation and status matrix, in-process (`app.test_client()`).

What the API answers for a body or a key depends on Flask, the blueprints and the store
only, so it is checked here against the real app (embedded SQLite store, in-process
broker), fast and without a socket. "Publishes nothing" is checked on the broker's
output: `broker.on_message` (normally the fanout) records every publication that left
the API. What needs a real server (delivery to WebSocket clients, gunicorn's limits,
PostgreSQL, Redis) stays in the black-box suite. docs/PUBLISHING.md shows integrators the
same way to test against the app.
"""
from __future__ import annotations

import json

import pytest

from fonana_realtime.app import create_app
from fonana_realtime.settings import Settings
from support.db import NOTIFICATION_TYPES, ROW_KEYS

KEY = "k" * 40
JWT = "j" * 40
BEARER = {"Authorization": f"Bearer {KEY}"}
FAN, CREATOR = "demo-fan", "demo-creator"          # the embedded store's demo users
API_PATHS = ["/api/events", "/api/notifications", "/api/notifications/read", "/api/notifications/clear"]


def _app(tmp_path_factory, **overrides):
    data = tmp_path_factory.mktemp("inprocess")
    values = {"data_dir": str(data), "log_dir": "", "jwt_secrets": (JWT,), "api_secret": KEY, **overrides}
    return create_app(Settings(**values))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return _app(tmp_path_factory)


@pytest.fixture(scope="module")
def keyless_app(tmp_path_factory):
    return _app(tmp_path_factory, api_secret=None)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def published(app):
    """Every publication the API handed to the broker during the test."""
    broker = app.extensions["fonana_realtime"].broker
    seen, fanout = [], broker.on_message
    broker.on_message = seen.append
    yield seen
    broker.on_message = fanout


def post(client, path, body=None, *, raw=None, headers=BEARER):
    if raw is not None:
        return client.post(path, data=raw, headers={**headers, "Content-Type": "application/json"})
    return client.post(path, json=body, headers=headers)


def assert_json_error(r, status):
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.get_data(as_text=True)[:500]}"
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.get_json()
    assert isinstance(body, dict) and body, body
    assert "Traceback" not in r.get_data(as_text=True)
    return body


def assert_400(r):
    body = assert_json_error(r, 400)
    assert any(isinstance(v, str) and v for v in body.values()), f"no reason in {body}"
    return body


# -- POST /api/events: what is accepted -----------------------------------------------------

def test_one_event_is_202_and_published_once(client, published):
    event = {"type": "feed_update", "userId": FAN, "posts": []}
    r = post(client, "/api/events", {"event": event})
    assert r.status_code == 202 and r.get_json()["published"] == 1, r.get_data(as_text=True)
    assert [json.loads(m.payload) for m in published] == [event]


def test_a_list_is_202_and_published_in_order(client, published):
    events = [{"type": "post_deleted", "postId": f"p{i}"} for i in range(3)]
    r = post(client, "/api/events", {"events": events})
    assert r.status_code == 202 and r.get_json()["published"] == 3
    assert [json.loads(m.payload) for m in published] == events


# -- POST /api/events: validation (moved from the black-box suite) -----------------------------

RAW_BODIES = {
    "not_json": "this is not json",
    "truncated_json": '{"event": {"type": "feed_update"',
    "empty_body": "",
    "json_array": '[{"type": "feed_update", "userId": "x", "posts": []}]',
    "json_string": '"feed_update"',
    "json_null": "null",
    "json_number": "1",
    "invalid_utf8": b'{"event": {"type": "feed_update", "userId": "\xff", "posts": []}}',
    "nan": '{"event": {"type": "feed_update", "userId": "x", "posts": [NaN]}}',
    "lone_surrogate": '{"event": {"type": "feed_update", "userId": "x", "posts": ["\\ud800"]}}',
    # issue 18.6: readers differ on which of two keys counts; the checked postId may not be the delivered one
    "duplicate_key_in_event": '{"event": {"type": "post_liked", "postId": "p-open", "userId": "x", '
                              '"likesCount": 1, "postId": "p-other"}}',
    "duplicate_key_at_top": '{"event": {"type": "post_deleted", "postId": "p-1"}, '
                            '"event": {"type": "post_deleted", "postId": "p-2"}}',
    "duplicate_key_deep": '{"event": {"type": "comment_added", "postId": "p-1", '
                          '"comment": {"id": "c", "id": "d"}}}',
}


@pytest.mark.parametrize("kind", sorted(RAW_BODIES))
def test_malformed_body_is_400(client, published, kind):
    assert_400(post(client, "/api/events", raw=RAW_BODIES[kind]))
    assert published == []


def BAD_REQUESTS(P="p-1", F=FAN):
    liked = {"type": "post_liked", "postId": P, "userId": F, "likesCount": 1}
    return {
        "empty_object": {},
        "event_missing": {"channel": {"type": "post", "postId": P}},
        "event_null": {"event": None},
        "event_string": {"event": "post_liked"},
        "event_list": {"event": [liked]},
        "event_without_type": {"event": {"postId": P, "likesCount": 1}},
        "event_type_not_string": {"event": {"type": 7, "postId": P}},
        "event_type_empty": {"event": {"type": "", "postId": P}},
        "unknown_type_without_address": {"event": {"type": "made_up_event", "postId": P}},
        "post_liked_without_postId": {"event": {"type": "post_liked", "userId": F, "likesCount": 1}},
        "post_liked_with_bad_postId": {"event": {"type": "post_liked", "postId": "bad id", "userId": F,
                                                 "likesCount": 1}},
        "feed_update_without_userId": {"event": {"type": "feed_update", "posts": []}},
        "creator_updated_without_creatorId": {"event": {"type": "creator_updated", "data": {}}},
        "post_created_without_userId": {"event": {"type": "post_created", "post": {"id": P}, "timestamp": "x"}},
        "channel_unknown_type": {"event": liked, "channel": {"type": "chat", "id": "x"}},
        "channel_missing_id": {"event": liked, "channel": {"type": "post"}},
        "channel_bad_id": {"event": liked, "channel": {"type": "post", "postId": "a b"}},
        "channel_id_too_long": {"event": liked, "channel": {"type": "post", "postId": "a" * 129}},
        "channel_key_unknown_prefix": {"event": liked, "channel": "chat_abc"},
        "channel_key_empty_id": {"event": liked, "channel": "post_"},
        "channel_key_bad_id": {"event": liked, "channel": "post_a b"},
        "channel_key_no_separator": {"event": liked, "channel": "nonsense"},
        "channel_number": {"event": liked, "channel": 5},
        "userId_empty": {"event": liked, "userId": ""},
        "userId_number": {"event": liked, "userId": 5},
        "userId_bad_chars": {"event": liked, "userId": "a/b"},
        "events_not_a_list": {"events": {"type": "post_liked"}},
        "events_item_not_object": {"events": ["post_liked"]},
        "events_empty": {"events": []},
        # issue 18.6: catalogue fields have kinds (events.CATALOGUE)
        "likesCount_string": {"event": dict(liked, likesCount="five")},
        "likesCount_negative": {"event": dict(liked, likesCount=-1)},
        "likesCount_boolean": {"event": dict(liked, likesCount=True)},
        "likesCount_fraction": {"event": dict(liked, likesCount=1.5)},
        "post_liked_userId_number": {"event": dict(liked, userId=7)},
        "post_liked_userId_not_an_id": {"event": dict(liked, userId="a b")},
        "comment_added_comment_string": {"event": {"type": "comment_added", "postId": P, "comment": "hi"}},
        "feed_update_posts_object": {"event": {"type": "feed_update", "userId": F, "posts": {}}},
        "post_created_timestamp_empty": {"event": {"type": "post_created", "post": {"id": P}, "userId": F,
                                                   "timestamp": ""}},
        "notification_read_notificationId_null": {"event": {"type": "notification_read", "userId": F,
                                                            "notificationId": None}},
        "creator_updated_data_list": {"event": {"type": "creator_updated", "creatorId": F, "data": []}},
    }


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS()))
def test_bad_request_is_400_and_publishes_nothing(client, published, name):
    assert_400(post(client, "/api/events", BAD_REQUESTS()[name]))
    assert published == []


# the `type` of every frame the server itself sends (PROTOCOL.md 2.2, 7)
SERVER_FRAME_TYPES = ["connected", "subscribed", "unsubscribed", "pong", "authenticated", "error",
                      "unread_notifications", "recovered", "event"]


@pytest.mark.parametrize("frame_type", SERVER_FRAME_TYPES)
def test_an_event_of_a_server_frames_type_is_400_even_addressed(client, published, frame_type):
    """Issue 18.6: a published `connected`, `error`, `pong`... would reach clients as if
    the server had sent it."""
    for body in ({"event": {"type": frame_type, "data": {}}, "userId": FAN},
                 {"events": [{"type": "post_deleted", "postId": "p-1"}, {"type": frame_type}],
                  "channel": "post_p-1"}):
        answer = assert_400(post(client, "/api/events", body))
        assert frame_type in answer["reason"], answer
    assert published == []


@pytest.mark.parametrize("bad_index", [0, 2])
def test_a_list_with_an_invalid_item_is_400_naming_it_and_publishes_nothing(client, published, bad_index):
    events = [{"type": "post_deleted", "postId": f"p{i}"} for i in range(3)]
    events[bad_index] = {"type": "post_deleted"}
    body = assert_400(post(client, "/api/events", {"events": events}))
    assert body["index"] == bad_index
    assert published == []


def test_a_list_over_api_max_events_is_400(tmp_path_factory):
    small = _app(tmp_path_factory, api_max_events=2)
    events = [{"type": "post_deleted", "postId": f"p{i}"} for i in range(3)]
    body = assert_400(post(small.test_client(), "/api/events", {"events": events}))
    assert body.get("limit") == 2


def test_body_over_api_max_body_bytes_is_413_json(tmp_path_factory):
    small = _app(tmp_path_factory, api_max_body_bytes=1024)
    big = {"event": {"type": "feed_update", "userId": FAN, "posts": ["x" * 2048]}}
    body = assert_json_error(post(small.test_client(), "/api/events", big), 413)
    assert body == {"error": "payload_too_large", "limit": 1024}


# -- the bearer key (moved from the black-box suite) ------------------------------------------------

@pytest.mark.parametrize("kind", ["missing", "wrong", "empty_bearer", "no_scheme", "basic_scheme", "prefix",
                                  "with_suffix"])
def test_wrong_or_missing_key_is_401(client, published, kind):
    headers = {
        "missing": {},
        "wrong": {"Authorization": "Bearer wrong-key"},
        "empty_bearer": {"Authorization": "Bearer "},
        "no_scheme": {"Authorization": KEY},
        "basic_scheme": {"Authorization": f"Basic {KEY}"},
        "prefix": {"Authorization": f"Bearer {KEY[:-1]}"},
        "with_suffix": {"Authorization": f"Bearer {KEY}x"},
    }[kind]
    r = post(client, "/api/events", {"event": {"type": "feed_update", "userId": FAN, "posts": []}},
             headers=headers)
    assert assert_json_error(r, 401) == {"error": "unauthorized", "reason": "bad_api_key"}
    assert published == []


def test_key_is_checked_before_the_body(client):
    assert_json_error(post(client, "/api/events", raw="not json", headers={"Authorization": "Bearer no"}), 401)


@pytest.mark.parametrize("path", API_PATHS)
def test_every_api_route_needs_the_key(client, path):
    assert_json_error(post(client, path, {"userId": "x"}, headers={}), 401)


@pytest.mark.parametrize("path", API_PATHS)
def test_api_is_503_without_ws_api_secret(keyless_app, path):
    client = keyless_app.test_client()
    valid = {"event": {"type": "feed_update", "userId": "nobody", "posts": []}}
    for headers in ({}, {"Authorization": "Bearer anything"}, {"Authorization": "Bearer "}):
        body = assert_json_error(post(client, path, valid, headers=headers), 503)
        assert body["error"] == "api_disabled", body


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_on_api_events_are_405_json(client, method):
    r = client.open("/api/events", method=method, headers=BEARER)
    assert_json_error(r, 405)


def test_an_unknown_path_is_404_json(client):
    assert assert_json_error(client.get("/api/nope", headers=BEARER), 404)["error"] == "not_found"


# -- /api/notifications* (moved from the black-box suite where no WebSocket is needed) --------------

def test_create_notification_is_201_with_the_row(client, published):
    r = post(client, "/api/notifications", {"userId": FAN, "type": "LIKE_POST", "title": "t", "message": "m",
                                            "metadata": {"postId": "p"}})
    assert r.status_code == 201, r.get_data(as_text=True)
    row = r.get_json()
    assert set(row) == ROW_KEYS
    assert (row["userId"], row["isRead"], row["metadata"]) == (FAN, False, {"postId": "p"})
    assert [json.loads(m.payload) for m in published] == [{"type": "notification", "userId": FAN,
                                                           "notification": row}]


@pytest.mark.parametrize("ntype", NOTIFICATION_TYPES)
def test_every_notification_type_is_accepted(client, ntype):
    r = post(client, "/api/notifications", {"userId": FAN, "type": ntype, "title": "t", "message": "m"})
    assert r.status_code == 201, (ntype, r.get_data(as_text=True)[:300])


@pytest.mark.parametrize("ntype", ["NOT_A_TYPE", "like_post", "", 5, None])
def test_unknown_notification_type_is_400_and_inserts_nothing(client, app, published, ntype):
    before = _unread(app, CREATOR)
    assert_400(post(client, "/api/notifications", {"userId": CREATOR, "type": ntype, "title": "t",
                                                   "message": "m"}))
    assert _unread(app, CREATOR) == before
    assert published == []


def test_unknown_user_is_404(client, published):
    r = post(client, "/api/notifications", {"userId": "no-such-user", "type": "LIKE_POST", "title": "t",
                                            "message": "m"})
    assert assert_json_error(r, 404) == {"error": "not_found", "reason": "unknown_user"}
    assert published == []


def _unread(app, user):
    return app.extensions["fonana_realtime"].store.unread_notifications(user)[1]


@pytest.mark.parametrize("missing", ["userId", "type", "title", "message"])
def test_missing_field_is_400_and_inserts_nothing(client, app, published, missing):
    before = _unread(app, CREATOR)
    body = {"userId": CREATOR, "type": "LIKE_POST", "title": "t", "message": "m"}
    del body[missing]
    assert_400(post(client, "/api/notifications", body))
    assert _unread(app, CREATOR) == before and published == []


@pytest.mark.parametrize("field,value", [("title", 5), ("message", None), ("userId", 7), ("type", ["LIKE_POST"]),
                                         ("metadata", [1])])
def test_wrongly_typed_field_is_400_and_inserts_nothing(client, app, published, field, value):
    before = _unread(app, CREATOR)
    body = {"userId": CREATOR, "type": "LIKE_POST", "title": "t", "message": "m", field: value}
    assert_400(post(client, "/api/notifications", body))
    assert _unread(app, CREATOR) == before and published == []


@pytest.mark.parametrize("path", API_PATHS[1:])
@pytest.mark.parametrize("raw", ["not json", "[]", '"x"', ""], ids=["not_json", "array", "string", "empty"])
def test_malformed_notification_body_is_400(client, path, raw):
    assert_400(post(client, path, raw=raw))


def test_mark_read_matrix(client, app, published):
    row = post(client, "/api/notifications", {"userId": FAN, "type": "LIKE_POST", "title": "t",
                                              "message": "m"}).get_json()
    published.clear()
    first = post(client, "/api/notifications/read", {"userId": FAN, "notificationId": row["id"]})
    assert first.status_code == 200 and first.get_json() == {"notification": {**row, "isRead": True}}
    again = post(client, "/api/notifications/read", {"userId": FAN, "notificationId": row["id"]})
    assert again.status_code == 200 and again.get_json() == first.get_json()
    assert [json.loads(m.payload) for m in published] == [           # pushed on change only
        {"type": "notification_read", "userId": FAN, "notificationId": row["id"]}]
    assert assert_json_error(post(client, "/api/notifications/read",
                                  {"userId": CREATOR, "notificationId": row["id"]}), 404) == {"error": "not_found"}
    assert assert_json_error(post(client, "/api/notifications/read",
                                  {"userId": FAN, "notificationId": "no-such"}), 404) == {"error": "not_found"}
    for missing in ("userId", "notificationId"):
        body = {"userId": FAN, "notificationId": row["id"]}
        del body[missing]
        assert_400(post(client, "/api/notifications/read", body))


def test_clear_matrix(client, published):
    post(client, "/api/notifications", {"userId": CREATOR, "type": "LIKE_POST", "title": "t", "message": "m"})
    published.clear()
    first = post(client, "/api/notifications/clear", {"userId": CREATOR})
    assert first.status_code == 200 and first.get_json()["cleared"] >= 1
    again = post(client, "/api/notifications/clear", {"userId": CREATOR})
    assert again.status_code == 200 and again.get_json() == {"cleared": 0}
    assert [json.loads(m.payload) for m in published] == [{"type": "notifications_cleared", "userId": CREATOR}]
    assert_400(post(client, "/api/notifications/clear", {}))


# -- operator endpoints and the WebSocket path over plain HTTP --------------------------------------

def test_health_ready_and_a_plain_get_on_ws(client):
    assert client.get("/health").get_json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.get_json()["database"] == "sqlite", ready.get_json()
    r = client.get("/ws")
    assert assert_json_error(r, 426)["error"] == "upgrade_required"
    assert r.headers["Upgrade"] == "websocket"


def test_the_in_process_example_of_the_publishing_docs_runs(tmp_path):
    """docs/PUBLISHING.md "Testing an integration in-process" shows this; keep it true."""
    import re
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "PUBLISHING.md").read_text()
    section = doc.split("## Testing an integration in-process", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "docs/PUBLISHING.md", "exec"), scope)
    tests = [v for k, v in scope.items() if k.startswith("test_")]
    assert len(tests) == 1
    tests[0](tmp_path)
