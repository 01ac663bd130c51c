"""Protocol v2: positions, history and recovery (PROTOCOL.md 7), in-process broker.

Real gunicorn, real `websockets` clients negotiating the `fonana.v2` subprotocol. Each
bullet of section 7 has its success and its failure case here; Redis-backed history
(several workers and hosts, a Redis restart, a server restart that keeps history) is
tested with the Redis history (issue 9, Redis side).
"""
from __future__ import annotations

import json
import threading

import pytest

from support.v2 import V2, expect_events, subscribe_v2, v2
from support.hardening import metric_total
from support.tcpproxy import TcpProxy

pytestmark = pytest.mark.postgres



@pytest.fixture(scope="module")
def small(server_factory_module, pg_url):
    """A server with a short history and a low recovery limit, for the failure cases."""
    return server_factory_module.start("v2-small", database_url=pg_url, env={
        "WS_HISTORY_SIZE": 5, "WS_RECOVERY_MAX": 8})


@pytest.fixture(scope="module")
def server_factory_module(tmp_path_factory):
    from support.server import ServerFactory
    factory = ServerFactory(tmp_path_factory)
    yield factory
    factory.stop_all()


@pytest.fixture
def scene(seed):
    creator = seed.user(is_creator=True)
    return {"creator": creator, "fan": seed.user(), "other": seed.user(), "post": seed.post(creator)}




def liked(scene, n):
    return {"type": "post_liked", "postId": scene["post"], "userId": scene["fan"], "likesCount": n}


def post(scene):
    return {"type": "post", "postId": scene["post"]}


def publish(srv, events, **address) -> list[dict]:
    body = {"events": events, **address} if isinstance(events, list) else {"event": events, **address}
    answer = srv.publish(body).json()
    assert answer["published"] == (len(events) if isinstance(events, list) else 1)
    return answer["positions"]






# ---- the handshake and the welcome --------------------------------------------------

def test_the_subprotocol_is_negotiated_and_the_welcome_carries_the_user_stream(server, scene):
    publish(server, {"type": "feed_update", "userId": scene["fan"], "posts": []})
    ws = v2(server, scene["fan"])
    data = ws.welcome["data"]
    assert data["protocol"] == V2 and data["userId"] == scene["fan"]
    user = data["user"]
    assert user["stream"] == f"user_{scene['fan']}" and user["offset"] == 1
    assert isinstance(user["epoch"], str) and user["epoch"]


def test_without_the_subprotocol_a_connection_is_legacy_byte_for_byte(server, scene):
    ws = server.connect(scene["fan"], subprotocols=["something.else"])
    assert ws.conn.subprotocol is None
    assert "protocol" not in ws.welcome["data"] and "user" not in ws.welcome["data"]
    ws.send_json({"type": "subscribe", "channel": post(scene)})
    assert json.loads(ws.recv_raw()) == {"type": "subscribed", "data": {
        "channel": post(scene), "channelKey": f"post_{scene['post']}"}}
    event = liked(scene, 1)
    publish(server, event)
    raw = ws.recv_raw()
    assert raw == json.dumps(event, separators=(",", ":"))     # the flat event, exactly
    ws.send_json({"type": "recover", "stream": f"user_{scene['fan']}", "since": {"offset": 0, "epoch": "x"}})
    ws.expect_error("unknown_type")                             # v2 commands do not exist for legacy
    ws.barrier()


# ---- event frames --------------------------------------------------------------------

def test_events_carry_id_stream_offset_epoch_and_the_flat_event(server, scene):
    ws = v2(server, scene["fan"])
    sub = subscribe_v2(ws, post(scene))
    key = f"post_{scene['post']}"
    assert (sub["stream"], sub["offset"], sub["channelKey"]) == (key, 0, key) and "recovered" not in sub
    positions = publish(server, [liked(scene, n) for n in range(3)])
    assert positions == [{key: 1}, {key: 2}, {key: 3}]
    frames = expect_events(ws, key, [1, 2, 3], sub["epoch"])
    assert [f["data"] for f in frames] == [liked(scene, n) for n in range(3)]
    assert len({f["id"] for f in frames}) == 3
    ws.barrier()


def test_a_union_is_sent_once_under_the_first_stream_of_its_route_the_connection_holds(server, scene):
    holder, user_only = v2(server, scene["fan"]), v2(server, scene["fan"])
    key = f"post_{scene['post']}"
    subscribe_v2(holder, post(scene))
    event = {"type": "custom", "n": 1}
    [positions] = publish(server, event, channel=key, userId=scene["fan"])
    assert set(positions) == {key, f"user_{scene['fan']}"}
    a = holder.expect_type("event")
    assert a["stream"] == key and a["offset"] == positions[key] and a["data"] == event
    b = user_only.expect_type("event")
    assert b["stream"] == f"user_{scene['fan']}" and b["offset"] == positions[f"user_{scene['fan']}"]
    assert a["id"] == b["id"]                                  # one publication, one id
    holder.barrier()
    user_only.barrier()


# ---- subscribe with since ----------------------------------------------------------------

def test_subscribe_since_replays_exactly_what_was_missed_then_goes_live(server, scene):
    key = f"post_{scene['post']}"
    first = v2(server, scene["fan"])
    sub = subscribe_v2(first, post(scene))
    publish(server, [liked(scene, n) for n in range(2)])
    seen = expect_events(first, key, [1, 2])
    first.close()                                               # away ...
    publish(server, [liked(scene, n) for n in range(2, 6)])     # ... while 3..6 happen
    back = v2(server, scene["fan"])
    data = subscribe_v2(back, post(scene), since={"offset": seen[-1]["offset"], "epoch": sub["epoch"]})
    assert data["recovered"] is True and data["offset"] == 6 and data["epoch"] == sub["epoch"]
    replay = expect_events(back, key, [3, 4, 5, 6])
    assert [f["data"]["likesCount"] for f in replay] == [2, 3, 4, 5]
    publish(server, liked(scene, 6))
    expect_events(back, key, [7])
    back.barrier()


def test_subscribe_since_the_top_replays_nothing_and_says_recovered(server, scene):
    ws = v2(server, scene["fan"])
    sub = subscribe_v2(ws, post(scene))
    again = v2(server, scene["fan"])
    data = subscribe_v2(again, post(scene), since={"offset": sub["offset"], "epoch": sub["epoch"]})
    assert data["recovered"] is True and data["offset"] == sub["offset"]
    again.barrier()


def test_another_epoch_is_not_recovered_and_nothing_is_replayed(server, scene):
    publish(server, [liked(scene, n) for n in range(3)])
    ws = v2(server, scene["fan"])
    data = subscribe_v2(ws, post(scene), since={"offset": 1, "epoch": "an-old-epoch"})
    assert data["recovered"] is False and data["offset"] == 3 and data["epoch"] != "an-old-epoch"
    assert data["reason"] == "epoch"
    ws.barrier()                                                # nothing replayed
    publish(server, liked(scene, 9))
    expect_events(ws, f"post_{scene['post']}", [4])             # live from TOP on


def test_trimmed_history_is_not_recovered(small, scene):
    ws = v2(small, scene["fan"])
    sub = subscribe_v2(ws, post(scene))
    publish(small, [liked(scene, n) for n in range(7)])         # WS_HISTORY_SIZE=5 keeps 3..7
    back = v2(small, scene["fan"])
    data = subscribe_v2(back, post(scene), since={"offset": 1, "epoch": sub["epoch"]})
    assert data["recovered"] is False and data["offset"] == 7 and data["reason"] == "trimmed"
    back.barrier()
    ok = subscribe_v2(v2(small, scene["fan"]), post(scene), since={"offset": 2, "epoch": sub["epoch"]})
    assert ok["recovered"] is True                              # 3..7 are all still there


def test_more_missed_than_the_recovery_limit_is_not_recovered(small, scene):
    ws = v2(small, scene["fan"])
    sub = subscribe_v2(ws, post(scene))
    publish(small, [liked(scene, n) for n in range(9)])         # WS_RECOVERY_MAX=8
    back = v2(small, scene["fan"])
    data = subscribe_v2(back, post(scene), since={"offset": 0, "epoch": sub["epoch"]})
    assert data["recovered"] is False and data["reason"] == "too_many"
    back.barrier()


def test_expired_history_is_not_recovered(server_factory, pg_url, scene):
    import time
    srv = server_factory.start("v2-expiry", database_url=pg_url, env={"WS_HISTORY_SECONDS": 0.3})
    ws = v2(srv, scene["fan"])
    sub = subscribe_v2(ws, post(scene))
    publish(srv, [liked(scene, n) for n in range(2)])
    time.sleep(0.5)      # age is the input here: the events must be older than WS_HISTORY_SECONDS
    data = subscribe_v2(v2(srv, scene["fan"]), post(scene), since={"offset": 0, "epoch": sub["epoch"]})
    assert data["recovered"] is False and data["offset"] == 2 and data["reason"] == "expired"
    fresh = subscribe_v2(v2(srv, scene["fan"]), post(scene), since={"offset": 2, "epoch": sub["epoch"]})
    assert fresh["recovered"] is True                           # nothing missed: nothing needed


@pytest.mark.parametrize("since", [{"offset": -1, "epoch": "e"}, {"offset": "3", "epoch": "e"},
                                   {"offset": 1}, {"offset": True, "epoch": "e"}, [1, "e"], "e:1"])
def test_a_malformed_since_is_an_error_and_the_connection_lives(server, scene, since):
    ws = v2(server, scene["fan"])
    ws.send_json({"type": "subscribe", "channel": post(scene), "since": since})
    assert '"since"' in ws.expect_error("invalid_message")["data"]["reason"]
    ws.ping()


def test_subscribe_since_still_checks_access(server, seed, scene):
    locked = seed.post(scene["creator"], locked=True)
    ws = v2(server, scene["other"])
    ws.send_json({"type": "subscribe", "channel": {"type": "post", "postId": locked},
                  "since": {"offset": 0, "epoch": "e"}})
    ws.expect_error("access_denied")
    ws.barrier()


# ---- recover the user stream ----------------------------------------------------------------

def test_recover_replays_the_own_user_stream(server, scene):
    first = v2(server, scene["fan"])
    user = first.welcome["data"]["user"]
    first.close()
    events = [{"type": "feed_update", "userId": scene["fan"], "posts": [n]} for n in range(3)]
    publish(server, events)
    back = v2(server, scene["fan"])
    assert back.welcome["data"]["user"]["offset"] == user["offset"] + 3
    back.send_json({"type": "recover", "stream": user["stream"], "since": {"offset": user["offset"],
                                                                         "epoch": user["epoch"]}})
    reply = back.expect_type("recovered")["data"]
    assert reply == {"stream": user["stream"], "offset": user["offset"] + 3, "epoch": user["epoch"],
                     "recovered": True}
    frames = expect_events(back, user["stream"], [user["offset"] + n for n in (1, 2, 3)])
    assert [f["data"] for f in frames] == events
    back.barrier()


def test_recover_after_live_events_sends_each_missed_one_once(server, scene):
    first = v2(server, scene["fan"])
    user = first.welcome["data"]["user"]
    first.close()
    feed = [{"type": "feed_update", "userId": scene["fan"], "posts": [n]} for n in range(4)]
    publish(server, feed[:2])                                   # missed while away
    back = v2(server, scene["fan"])
    publish(server, feed[2:])                                   # live on the new connection
    live = expect_events(back, user["stream"], [user["offset"] + 3, user["offset"] + 4])
    back.send_json({"type": "recover", "stream": user["stream"],
                    "since": {"offset": user["offset"], "epoch": user["epoch"]}})
    assert back.expect_type("recovered")["data"]["recovered"] is True
    replay = expect_events(back, user["stream"], [user["offset"] + 1, user["offset"] + 2])
    assert [f["data"] for f in live + replay] == feed[2:] + feed[:2]
    back.barrier()


def test_recover_of_another_users_stream_is_access_denied(server, scene):
    ws = v2(server, scene["fan"])
    ws.send_json({"type": "recover", "stream": f"user_{scene['other']}", "since": {"offset": 0, "epoch": "e"}})
    ws.expect_error("access_denied")
    ws.send_json({"type": "recover", "stream": f"post_{scene['post']}", "since": {"offset": 0, "epoch": "e"}})
    ws.expect_error("access_denied")
    ws.send_json({"type": "recover", "stream": f"user_{scene['fan']}"})
    assert "since" in ws.expect_error("invalid_message")["data"]["reason"]
    ws.ping()


@pytest.mark.parametrize("stream", [None, 7, ["user_x"]], ids=["missing", "number", "list"])
def test_recover_without_a_stream_is_invalid_message_with_a_reason(server, scene, stream):
    """Not access_denied: nothing was refused, the command lacks a part (PROTOCOL.md 7)."""
    ws = v2(server, scene["fan"])
    cmd = {"type": "recover", "since": {"offset": 0, "epoch": "e"}}
    if stream is not None:
        cmd["stream"] = stream
    ws.send_json(cmd)
    data = ws.expect_error("invalid_message", "Invalid message format")["data"]
    assert '"stream"' in data["reason"] and "user_" in data["reason"], data
    ws.ping()                                                   # the connection lives


def test_an_offset_beyond_the_top_is_not_recovered_and_says_ahead(server, scene):
    publish(server, [liked(scene, n) for n in range(2)])
    ws = v2(server, scene["fan"])
    sub = subscribe_v2(ws, post(scene))
    data = subscribe_v2(v2(server, scene["fan"]), post(scene),
                        since={"offset": sub["offset"] + 5, "epoch": sub["epoch"]})
    assert (data["recovered"], data["reason"], data["offset"]) == (False, "ahead", sub["offset"])
    user = ws.welcome["data"]["user"]
    ws.send_json({"type": "recover", "stream": user["stream"],
                  "since": {"offset": user["offset"] + 1, "epoch": user["epoch"]}})
    reply = ws.expect_type("recovered")["data"]
    assert (reply["recovered"], reply["reason"]) == (False, "ahead")
    ws.barrier()


def test_a_recovered_frame_that_succeeds_carries_no_reason(server, scene):
    ws = v2(server, scene["fan"])
    user = ws.welcome["data"]["user"]
    ws.send_json({"type": "recover", "stream": user["stream"],
                  "since": {"offset": user["offset"], "epoch": user["epoch"]}})
    assert ws.expect_type("recovered")["data"] == {**user, "recovered": True}


def test_recover_with_another_epoch_is_not_recovered(server, scene):
    ws = v2(server, scene["fan"])
    ws.send_json({"type": "recover", "stream": f"user_{scene['fan']}", "since": {"offset": 0, "epoch": "gone"}})
    reply = ws.expect_type("recovered")["data"]
    assert reply["recovered"] is False and reply["epoch"] == ws.welcome["data"]["user"]["epoch"]
    assert reply["reason"] == "epoch"
    ws.barrier()


# ---- the race: publishes running during replays ---------------------------------------------

def test_replay_then_live_has_no_gap_and_no_duplicate_while_a_publisher_hammers(server, scene):
    key = f"post_{scene['post']}"
    watcher = v2(server, scene["fan"])
    sub = subscribe_v2(watcher, post(scene))
    publish(server, [liked(scene, n) for n in range(20)])       # history to replay: 1..20
    total = 220
    stop = threading.Event()
    failures: list = []

    def hammer():
        try:
            for n in range(20, total):
                if stop.is_set():
                    return
                publish(server, liked(scene, n))
        except Exception as exc:          # surfaced below, never swallowed
            failures.append(exc)

    publisher = threading.Thread(target=hammer)
    clients = [v2(server, scene["fan"]) for _ in range(6)]
    publisher.start()
    try:
        for n, ws in enumerate(clients):                        # recover from various points
            data = subscribe_v2(ws, post(scene), since={"offset": n * 3, "epoch": sub["epoch"]})
            assert data["recovered"] is True
    finally:
        publisher.join(60)
        stop.set()
    assert not failures, failures
    for n, ws in enumerate(clients + [watcher]):
        start = n * 3 if ws is not watcher else 0
        offsets = [f["offset"] for f in expect_events(ws, key, range(start + 1, total + 1))]
        assert offsets == list(range(start + 1, total + 1))    # contiguous, once each
        ws.barrier()


# ---- what it is for: a network drop, a restart ------------------------------------------------

def test_a_client_cut_off_by_the_network_recovers_what_it_missed(server, scene):
    key = f"post_{scene['post']}"
    proxy = TcpProxy(server.host, server.port)
    try:
        from support.ws import open_ws
        url = f"ws://127.0.0.1:{proxy.port}/ws?token={server.token(scene['fan'])}"
        ws = open_ws(url, subprotocols=[V2])
        sub = subscribe_v2(ws, post(scene))
        publish(server, liked(scene, 0))
        last = expect_events(ws, key, [sub["offset"] + 1])[-1]
        proxy.down()                                            # the phone changes networks
        publish(server, [liked(scene, n) for n in range(1, 4)])
        ws.close()
        proxy.up()
        back = open_ws(url, subprotocols=[V2])
        data = subscribe_v2(back, post(scene), since={"offset": last["offset"], "epoch": last["epoch"]})
        assert data["recovered"] is True
        frames = expect_events(back, key, [last["offset"] + n for n in (1, 2, 3)])
        assert [f["data"]["likesCount"] for f in frames] == [1, 2, 3]
        back.barrier()
        back.close()
    finally:
        proxy.down()


def test_a_restarted_in_process_server_has_a_new_epoch_and_says_so(server_factory, pg_url, scene):
    srv = server_factory.start("v2-restart", database_url=pg_url, env={"WS_DRAIN_SECONDS": 0})
    ws = v2(srv, scene["fan"])
    sub = subscribe_v2(ws, post(scene))
    publish(srv, liked(scene, 1))
    expect_events(ws, f"post_{scene['post']}", [1])
    srv.stop()                                                  # SIGTERM: drained with 1001
    srv.start()                                                 # a new process, the same port
    back = v2(srv, scene["fan"])
    data = subscribe_v2(back, post(scene), since={"offset": 1, "epoch": sub["epoch"]})
    assert data["recovered"] is False and data["epoch"] != sub["epoch"]   # never wrong events
    assert data["reason"] == "epoch"
    back.barrier()


# ---- metrics -----------------------------------------------------------------------------



def test_recoveries_and_replayed_events_are_counted(small, scene):
    names = ("fonana_rt_recoveries_total", "fonana_rt_replayed_events_total")
    before = (metric_total(small, names[0], result="succeeded"), metric_total(small, names[0], result="epoch"),
              metric_total(small, names[1]))
    ws = v2(small, scene["fan"])
    sub = subscribe_v2(ws, post(scene))
    publish(small, [liked(scene, n) for n in range(2)])
    back = v2(small, scene["fan"])
    assert subscribe_v2(back, post(scene), since={"offset": sub["offset"], "epoch": sub["epoch"]})["recovered"]
    expect_events(back, f"post_{scene['post']}", [sub["offset"] + 1, sub["offset"] + 2])
    assert not subscribe_v2(v2(small, scene["fan"]), post(scene), since={"offset": 0, "epoch": "x"})["recovered"]
    after = (metric_total(small, names[0], result="succeeded"), metric_total(small, names[0], result="epoch"),
             metric_total(small, names[1]))
    assert [a - b for a, b in zip(after, before)] == [1, 1, 2]
    assert "fonana_rt_history_bytes" in small.get(
        "/metrics", headers={"Authorization": f"Bearer {small.api_key}"}).text
