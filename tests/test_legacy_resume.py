"""Automatic resume of legacy connections (PROTOCOL.md 8), over real sockets.

These servers run with resume on (WS_RESUME_SECONDS at its default) and pacing off
(WS_LEGACY_TYPE_GAP_MS=0) so every frame's place can be asserted exactly; the browser
tests (test_browser_legacy.py) run both at their defaults. The tests taking `srv` run
twice: in process, and with the history and marks in a private redis-server (one worker,
so which streams that worker already hears is up to the test).
"""
from __future__ import annotations

import secrets
from urllib.parse import quote

import pytest

from fonana_realtime.resume_marks import RedisMarks
from support.waiting import wait_until
from support.hardening import metric_total
from support.redis_server import RedisServer
from support.tcpproxy import TcpProxy
from support.ws import open_ws

pytestmark = pytest.mark.postgres

RESUME = {"WS_RESUME_SECONDS": None}


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    rs = RedisServer(tmp_path_factory.mktemp("resume-redis")).start()
    yield rs
    rs.stop()


@pytest.fixture(scope="module", params=["in_process", "redis"])
def srv(request, tmp_path_factory, pg_url):
    from support.server import Server
    env = dict(RESUME)
    if request.param == "redis":
        rs = request.getfixturevalue("private_redis")
        env.update(REDIS_URL=rs.url, REDIS_PREFIX=f"resume-{secrets.token_hex(3)}:", WS_WORKERS=1)
    s = Server(tmp_path_factory.mktemp("resume"), name=f"resume-{request.param}", database_url=pg_url,
               env=env).start()
    s.redis = request.getfixturevalue("private_redis") if request.param == "redis" else None
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _no_connection_left_over(request):
    """The module's servers are shared: the tests count "the server saw this connection
    end" as the open-connections gauge dropping by one, so a connection of the test before
    (closed by the client or cut at its proxy in that test's teardown, and not yet seen
    by the server) must be gone first, or its end would be taken for this test's cut."""
    if "srv" in request.fixturenames:
        srv = request.getfixturevalue("srv")
        wait_until(lambda: connections(srv) == 0, 10, "the connections of the tests before gone")


@pytest.fixture
def scene(seed):
    creator = seed.user(is_creator=True)
    return {"creator": creator, "fan": seed.user(), "post": seed.post(creator)}


def liked(scene, n):
    return {"type": "post_liked", "postId": scene["post"], "userId": scene["creator"], "likesCount": n}


def note(scene, n):
    return {"type": "feed_update", "userId": scene["fan"], "posts": [{"id": f"p{n}", "title": "t"}]}


def connections(srv) -> float:
    text = srv.get("/metrics", headers={"Authorization": f"Bearer {srv.api_key}"}).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("fonana_rt_connections"))




class Via:
    """Clients of `srv` through a proxy the test can cut."""

    def __init__(self, srv):
        self.srv = srv
        self.proxy = TcpProxy(srv.host, srv.port)

    def connect(self, user):
        url = f"ws://127.0.0.1:{self.proxy.port}/ws?token={quote(self.srv.token(user), safe='')}"
        return open_ws(url)

    def cut(self, expected_left: float):
        """The network goes; wait until the server has seen the connection end."""
        self.proxy.down()
        wait_until(lambda: connections(self.srv) <= expected_left, 10, "the server saw the cut")


def test_a_network_cut_replays_what_was_missed_right_after_welcome_and_subscribed(srv, scene):
    via = Via(srv)
    try:
        channel = {"type": "post", "postId": scene["post"]}
        ws = via.connect(scene["fan"])
        ws.subscribe(channel)
        srv.publish({"event": liked(scene, 1)})
        ws.expect_event(liked(scene, 1))
        srv.publish({"event": note(scene, 1)})
        ws.expect_event(note(scene, 1))
        before = connections(srv)
        resumes = metric_total(srv, "fonana_rt_legacy_resumes_total", result="replayed")
        via.cut(before - 1)
        srv.publish({"events": [liked(scene, 2), liked(scene, 3)]})
        srv.publish({"event": note(scene, 2)})
        via.proxy.up()
        back = via.connect(scene["fan"])                     # its welcome was read by open_ws
        back.expect_event(note(scene, 2))                    # user stream: right after the welcome
        back.subscribe(channel)                              # `subscribed`, then the missed likes
        back.expect_event(liked(scene, 2))
        back.expect_event(liked(scene, 3))
        back.barrier()                                       # each once
        srv.publish({"event": liked(scene, 4)})
        back.expect_event(liked(scene, 4))                   # then live
        back.barrier()
        assert metric_total(srv, "fonana_rt_legacy_resumes_total", result="replayed") == resumes + 2
        assert '"event": "resumed"' in srv.output()
    finally:
        via.proxy.down()


def test_a_client_that_closed_itself_gets_no_replay(srv, scene):
    channel = {"type": "post", "postId": scene["post"]}
    ws = srv.connect(scene["fan"])
    ws.subscribe(channel)
    srv.publish({"event": liked(scene, 1)})
    ws.expect_event(liked(scene, 1))
    before = connections(srv)
    ws.close()                                               # the client closes: 1000
    wait_until(lambda: connections(srv) <= before - 1, 10, "the server saw the close")
    srv.publish({"event": liked(scene, 2)})
    back = srv.connect(scene["fan"])
    back.subscribe(channel)
    back.barrier()                                           # nothing replayed


def test_two_tabs_that_dropped_both_get_what_they_missed(srv, scene):
    channel = {"type": "post", "postId": scene["post"]}
    via = Via(srv)
    try:
        ws = via.connect(scene["fan"])
        ws.subscribe(channel)
        srv.publish({"event": liked(scene, 1)})
        ws.expect_event(liked(scene, 1))
        before = connections(srv)
        via.cut(before - 1)
        srv.publish({"event": liked(scene, 2)})
        via.proxy.up()
        first = via.connect(scene["fan"])                   # two tabs come back: both get it
        second = via.connect(scene["fan"])
        for tab in (first, second):
            tab.subscribe(channel)
            tab.expect_event(liked(scene, 2))
            tab.barrier()
    finally:
        via.proxy.down()


def test_nothing_recoverable_means_nothing_replayed(tmp_path_factory, pg_url, scene):
    """History of 1 event: 2 missed are not recoverable; the page then reloads as usual."""
    from support.server import Server
    small = Server(tmp_path_factory.mktemp("resume-small"), name="resume-small", database_url=pg_url,
                   env={**RESUME, "WS_HISTORY_SIZE": 1}).start()
    via = Via(small)
    try:
        channel = {"type": "post", "postId": scene["post"]}
        ws = via.connect(scene["fan"])
        ws.subscribe(channel)
        small.publish({"event": liked(scene, 1)})
        ws.expect_event(liked(scene, 1))
        via.cut(connections(small) - 1)
        small.publish({"events": [liked(scene, 2), liked(scene, 3)]})
        via.proxy.up()
        back = via.connect(scene["fan"])
        back.subscribe(channel)
        back.barrier()
        small.publish({"event": liked(scene, 4)})
        back.expect_event(liked(scene, 4))
        assert metric_total(small, "fonana_rt_legacy_resumes_total", result="trimmed") == 1
    finally:
        via.proxy.down()
        small.stop()


def test_one_tab_dropped_twice_sees_each_event_once(srv, scene):
    """Resumed from a mark, then dropped again: the next resume starts where the second
    connection stood, not at the first mark (which is older than that connection)."""
    channel = {"type": "post", "postId": scene["post"]}
    via = Via(srv)
    try:
        ws = via.connect(scene["fan"])
        ws.subscribe(channel)
        via.cut(connections(srv) - 1)
        srv.publish({"event": liked(scene, 1)})
        via.proxy.up()
        again = via.connect(scene["fan"])
        again.subscribe(channel)
        again.expect_event(liked(scene, 1))                  # resumed
        srv.publish({"event": liked(scene, 2)})
        again.expect_event(liked(scene, 2))                  # live
        via.cut(connections(srv) - 1)
        srv.publish({"event": liked(scene, 3)})
        via.proxy.up()
        third = via.connect(scene["fan"])
        third.subscribe(channel)
        third.expect_event(liked(scene, 3))                  # only what it missed
        third.barrier()
    finally:
        via.proxy.down()


def cut_before_any_event_then_back(srv, scene, n: int):
    """A tab of the fan joins its user stream and the post (through a proxy), is cut
    before anything is written to it, like `n` and note `n` are published, and it comes
    back: each is replayed once, right after the welcome and `subscribed`."""
    channel = {"type": "post", "postId": scene["post"]}
    via = Via(srv)
    try:
        ws = via.connect(scene["fan"])
        ws.subscribe(channel)
        ws.barrier()
        via.cut(connections(srv) - 1)
        srv.publish({"event": liked(scene, n)})
        srv.publish({"event": note(scene, n)})
        via.proxy.up()
        back = via.connect(scene["fan"])
        back.expect_event(note(scene, n))                    # user stream, after the welcome
        back.subscribe(channel)
        back.expect_event(liked(scene, n))                   # the post, after `subscribed`
        back.barrier()
    finally:
        via.proxy.down()


def test_a_connection_cut_before_any_event_gets_what_it_missed(srv, scene):
    """Its marks are where it joined each stream, the first to hear them on its worker
    (with Redis: the position read before the worker's SUBSCRIBE)."""
    cut_before_any_event_then_back(srv, scene, 1)


def test_a_connection_that_joined_streams_already_heard_gets_what_it_missed(srv, scene, seed):
    """Its user stream and the post are heard on its worker before it joins (another tab
    of the fan, another fan of the post): its marks are what the worker had handed on, so
    like 1 and note 1, from before it joined, are not replayed."""
    other_fan = srv.connect(seed.user())
    other_fan.subscribe({"type": "post", "postId": scene["post"]})
    other_tab = srv.connect(scene["fan"])                    # not through the proxy: stays
    srv.publish({"event": liked(scene, 1)})
    other_fan.expect_event(liked(scene, 1))
    srv.publish({"event": note(scene, 1)})
    other_tab.expect_event(note(scene, 1))
    try:
        cut_before_any_event_then_back(srv, scene, 2)
        other_tab.expect_event(note(scene, 2))               # live all along
        other_fan.expect_event(liked(scene, 2))
    finally:
        other_fan.close()
        other_tab.close()


class PositionReads:
    """Counts the stream position script's calls on a Redis, by its SHA in Redis's own
    command log (SLOWLOG with a 0 µs threshold logs every command): other scripts run
    in the background of a connect (presence's and the live marks' batched writes, a
    gather interval later), so counting every EVALSHA raced with them."""

    def __init__(self, rs):
        import hashlib
        from fonana_realtime.redis_history import POSITION_SCRIPT
        self.client = rs.client()
        self.sha = hashlib.sha1(POSITION_SCRIPT.encode()).hexdigest().encode()

    def __enter__(self):
        self.client.config_set("slowlog-max-len", 100000)
        self.client.config_set("slowlog-log-slower-than", 0)
        self.client.slowlog_reset()
        return self

    def count(self) -> int:
        return sum(1 for entry in self.client.slowlog_get(100000)
                   if entry["command"].split(b" ")[:2] == [b"EVALSHA", self.sha])

    def __exit__(self, *exc):
        self.client.config_set("slowlog-log-slower-than", 10000)   # Redis's defaults
        self.client.config_set("slowlog-max-len", 128)
        self.client.slowlog_reset()


@pytest.mark.parametrize("srv", ["redis"], indirect=True)
def test_with_redis_a_legacy_connect_reads_each_position_once(srv, seed):
    """Where a legacy connection joins its streams costs no round trip of its own: the
    worker's listener reads a stream's position before its first SUBSCRIBE anyway, and
    a stream it already hears is where the worker's handing-on stands (issue 11: the two
    extra reads were ~30 % of a connect's CPU with Redis)."""
    creator = seed.user(is_creator=True)
    post = seed.post(creator)
    channel = {"type": "post", "postId": post}
    warm = srv.connect(seed.user())                          # scripts loaded, the post heard
    warm.subscribe(channel)
    warm.barrier()
    with PositionReads(srv.redis) as reads:
        user = seed.user()
        first = srv.connect(user)                            # its user stream: new here
        first.subscribe({"type": "notifications", "userId": user})   # new here too
        first.subscribe(channel)                             # heard already
        first.barrier()
        assert reads.count() == 2                            # one per new stream, none per join
    warm.close()
    first.close()


def drop(ws):
    """The client's network goes: no close frame (the server keeps its marks)."""
    import socket
    ws.conn.socket.shutdown(socket.SHUT_RDWR)
    ws.close()


def test_with_redis_a_user_dropping_ever_new_channels_keeps_at_most_max_marks(server_factory, private_redis,
                                                                               pg_url, seed):
    """Issue 18.4: the marks hash of a user who keeps dropping connections subscribed to
    new channels stays at WS_RESUME_MAX_MARKS fields, the last drop's all kept."""
    prefix = f"marks-{secrets.token_hex(3)}:"
    srv = server_factory.start("marks-bound", database_url=pg_url, env={
        **RESUME, "REDIS_URL": private_redis.url, "REDIS_PREFIX": prefix, "WS_RESUME_MAX_MARKS": 20})
    user = seed.user()
    stored = RedisMarks(private_redis.client(), prefix, 120).recall      # as a connect reads them
    for round_ in range(3):
        ws = srv.connect(user)
        channels = [f"creator_x{round_}n{i}" for i in range(15)]
        for name in channels:
            ws.subscribe({"type": "creator", "id": name.split("_", 1)[1]})
        ws.barrier()
        left = connections(srv) - 1
        drop(ws)
        wait_until(lambda left=left: connections(srv) <= left, 10, "the server saw the drop")
        wait_until(lambda channels=channels: set(channels) <= set(stored(user)), 10, "the marks written")
        assert len(stored(user)) <= 20
    assert len(stored(user)) == 20
