"""Protocol v2 (PROTOCOL.md 7) from the test side: connect with the subprotocol,
subscribe with `since`, read the replayed/live `event` frames of one stream."""
from __future__ import annotations

V2 = "fonana.v2"
EVENT_KEYS = {"type", "id", "stream", "offset", "epoch", "data"}


def v2(srv, user, **kw):
    """A client that negotiated `fonana.v2` (asserted)."""
    ws = srv.connect(user, subprotocols=[V2], **kw)
    assert ws.conn.subprotocol == V2
    return ws


def subscribe_v2(ws, channel, since=None) -> dict:
    """`subscribe` (with `since` when given); the `subscribed` frame's data."""
    msg = {"type": "subscribe", "channel": channel}
    if since is not None:
        msg["since"] = since
    ws.send_json(msg)
    return ws.expect_type("subscribed")["data"]


def expect_events(ws, stream, offsets, epoch=None, timeout: float = 10.0) -> list[dict]:
    """The next frames are v2 `event` frames of `stream` with exactly these offsets."""
    got = []
    for _ in offsets:
        frame = ws.expect_type("event", timeout=timeout)
        assert set(frame) == EVENT_KEYS, frame
        assert frame["stream"] == stream, frame
        if epoch is not None:
            assert frame["epoch"] == epoch, frame
        got.append(frame)
    assert [f["offset"] for f in got] == list(offsets)
    return got
