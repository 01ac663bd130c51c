"""A legacy (paced, PROTOCOL.md 8) connection keeps receiving behind middleboxes (issue 17).

Real gunicorn and PostgreSQL; the client reaches the server through tests/support's
TcpProxy playing a plain user-space TCP relay without TCP_NODELAY, as a simple balancer
does. Servers run with the real pacing defaults.
"""
from __future__ import annotations

import time

import pytest

from support.bursts import burst
from support.tcpproxy import TcpProxy
from support.ws import open_ws

pytestmark = pytest.mark.postgres

DEFAULTS = {"WS_LEGACY_TYPE_GAP_MS": None, "WS_RESUME_SECONDS": None}   # the server's own defaults


@pytest.fixture
def scene(seed):
    creator = seed.user(is_creator=True)
    return {"creator": creator, "fan": seed.user(), "posts": [seed.post(creator) for _ in range(3)]}


def receive_burst(client, scene, n: int, notes: list[str], timeout: float = 10.0):
    """Read until every post shows 10n and the burst's 3 notifications arrived, each once."""
    likes: dict = {}
    got: list[str] = []
    while not (got == notes and all(likes.get(p) == 10 * n for p in scene["posts"])):
        try:
            frame = client.recv_json(timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"burst {n}: stalled with likes {likes} and notifications {got}"
                                 f" (want {10 * n} on each post and {notes})") from None
        if frame.get("type") == "post_liked":
            likes[frame["postId"]] = frame["likesCount"]
        elif frame.get("type") == "notification":
            got.append(frame["notification"]["id"])
            assert got == notes[:len(got)], f"burst {n}: notifications {got}, want {notes}"
    # and after them nothing but re-sends of the final counts (PROTOCOL.md 8) up to a pong
    client.send_json({"type": "ping"})
    while (frame := client.recv_json()).get("type") != "pong":
        assert frame.get("type") == "post_liked" and frame["likesCount"] == 10 * n, frame


def subscribe_all(client, scene):
    """As the Fonana client does on open: every subscribe at once, then the replies."""
    channels = [{"type": "notifications", "userId": scene["fan"]}]
    channels += [{"type": "post", "postId": p} for p in scene["posts"]]
    for channel in channels:
        client.send_json({"type": "subscribe", "channel": channel})
    for channel in channels:
        assert client.expect_type("subscribed")["data"]["channel"] == channel
        if channel["type"] == "notifications":
            client.expect_type("unread_notifications")


# The relays: Nagle on both sockets; and that, reading 7 bytes at a time (every frame, both
# ways, reaches its side cut into pieces) through 2 KB socket buffers.
RELAYS = {"plain": {}, "small-reads-and-buffers": {"chunk": 7, "buffer": 2048}}


@pytest.mark.parametrize("relay", RELAYS)
def test_a_paced_connection_behind_a_plain_relay_gets_every_burst(server_factory, pg_url, scene, relay):
    """Burst after burst (4 s apart, the issue's shape: the server's pacing state of the
    connection is dropped between them) through a relay with Nagle on both sockets."""
    srv = server_factory.start("relay-nagle", database_url=pg_url, env=DEFAULTS)
    proxy = TcpProxy(srv.host, srv.port, nodelay=False, **RELAYS[relay])
    try:
        client = open_ws(f"ws://127.0.0.1:{proxy.port}/ws?token={srv.token(scene['fan'])}")
        subscribe_all(client, scene)
        for n in range(1, 4):
            if n > 1:
                # the pause between bursts (part of the scenario, not a wait for
                # anything): the server drops a quiet connection's pacing state after 1 s
                time.sleep(4.0)
            receive_burst(client, scene, n, burst(srv, scene, n))
        client.close()
    finally:
        proxy.down()
