"""Automatic resume of legacy connections (PROTOCOL.md 8), over real sockets.

These servers run with resume on (WS_RESUME_SECONDS at its default) and pacing off
(WS_LEGACY_TYPE_GAP_MS=0) so every frame's place can be asserted exactly; the browser
tests (test_browser_legacy.py) run both at their defaults.
"""
from __future__ import annotations

from urllib.parse import quote

import pytest

from support.waiting import wait_until
from support.hardening import metric_total
from support.tcpproxy import TcpProxy
from support.ws import open_ws

pytestmark = pytest.mark.postgres

RESUME = {"WS_RESUME_SECONDS": None}


@pytest.fixture(scope="module")
def srv(tmp_path_factory, pg_url):
    from support.server import Server
    s = Server(tmp_path_factory.mktemp("resume"), name="resume", database_url=pg_url, env=RESUME).start()
    yield s
    s.stop()


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
