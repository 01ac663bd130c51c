"""Replay then live (fanout.recover + streams.Streams, the v2 path) on its own, with small fakes:
a broker whose history read lets live events through *during* the read, the classic race
the integration test cannot force with the in-process broker (its read never yields)."""
from __future__ import annotations

import json
import struct
from types import SimpleNamespace

from fonana_realtime.broker.memory import MemoryBroker
from fonana_realtime.connection import V2, Connection
from fonana_realtime.events import Route
from fonana_realtime.fanout import Fanout
from fonana_realtime.history import MemoryHistory
from fonana_realtime.hub import Hub

LIMITS = SimpleNamespace(ping_interval=25.0, rate_burst=40)


class Recording(Connection):
    """A real Connection whose one write path records the frames instead of a socket."""

    def __init__(self, user_id, protocol=V2):
        super().__init__(None, None, user_id, 0.0, "127.0.0.1", LIMITS, protocol=protocol)
        self.frames: list[dict] = []

    def send(self, data, frames=1):
        data = bytes(data)
        while data:                                   # unmasked server text frames
            n = data[1] & 0x7F
            start = 2
            if n == 126:
                n, start = struct.unpack("!H", data[2:4])[0], 4
            elif n == 127:
                n, start = struct.unpack("!Q", data[2:10])[0], 10
            self.frames.append(json.loads(data[start:start + n]))
            data = data[start + n:]
        return True

    def events(self, stream):
        return [f["offset"] for f in self.frames if f.get("type") == "event" and f["stream"] == stream]


class RacingBroker(MemoryBroker):
    """History reads that let `during` publishes happen mid-read (before or after the
    read's snapshot), as a networked history read does; a LOST one is stored after the
    snapshot but never delivered live (the broker lost it)."""

    def __init__(self):
        super().__init__(MemoryHistory(100, 300, 3600))
        self.during = []          # (route, payload, True: before the snapshot, False: after, LOST)
        self.fanout = None

    def history(self, stream, epoch, since, limit):
        early = [d for d in self.during if d[2] is True]
        late = [d for d in self.during if d[2] is not True]
        self.during = []
        for route, payload, _ in early:               # in the snapshot AND delivered live
            self.publish(route, payload)
        answer = super().history(stream, epoch, since, limit)
        for route, payload, when in late:             # only delivered live, or lost
            if when is LOST:
                deliver, self.on_message = self.on_message, lambda message: None
                self.publish(route, payload)
                self.on_message = deliver
            else:
                self.publish(route, payload)
        self.fanout._write_pending()                  # their live delivery reaches us now
        return answer


ROUTE = Route(channels=("post_p",))
LOST = "lost"


def _setup():
    broker = RacingBroker()
    fanout = Fanout(Hub(), broker, recovery_max=300)
    broker.fanout = fanout
    return broker, fanout


def _scene(published: int):
    """`published` events on post_p, then a v2 connection of user u (not subscribed yet)."""
    broker, fanout = _setup()
    _publish(broker, fanout, published)
    conn = Recording("u")
    fanout.add(conn)
    return broker, fanout, broker.position("post_p")[0], conn


def _publish(broker, fanout, n, start=0):
    for i in range(start, start + n):
        broker.publish(ROUTE, b'{"type":"x","n":%d}' % i)
    fanout._write_pending()


def _subscribe_since(fanout, conn, since):
    replies = []
    fanout.recover(conn, "post_p", since, reply=replies.append,
                   join=lambda: fanout.subscribe(conn, "post_p"))
    fanout._write_pending()
    return replies[0]


def test_events_published_during_the_read_are_sent_once_in_their_place():
    broker, fanout = _setup()
    _publish(broker, fanout, 5)                                   # offsets 1..5
    epoch = broker.position("post_p")[0]
    conn = Recording("u")
    fanout.add(conn)
    # 6,7 land in the snapshot and also arrive live; 8,9 arrive live only
    broker.during = [(ROUTE, b'{"type":"x","n":%d}' % n, n < 7) for n in range(5, 9)]
    reply = _subscribe_since(fanout, conn, (epoch, 2))
    assert reply.ok and reply.top == 7
    _publish(broker, fanout, 2, start=9)                          # live: 10, 11
    assert conn.events("post_p") == list(range(3, 12))           # contiguous, each once


def test_nothing_live_overtakes_the_replay_and_the_reply_comes_first():
    broker, fanout, epoch, conn = _scene(3)
    broker.during = [(ROUTE, b'{"type":"x","n":9}', False)]
    replies = []

    def reply(rec):
        replies.append(rec)
        conn.send_json({"type": "subscribed"})

    fanout.recover(conn, "post_p", (epoch, 0), reply=reply, join=lambda: fanout.subscribe(conn, "post_p"))
    kinds = [f["type"] if f["type"] != "event" else f["offset"] for f in conn.frames]
    assert kinds == ["subscribed", 1, 2, 3, 4]


def test_not_recoverable_replays_nothing_and_goes_live_after_the_top():
    broker, fanout = _setup()
    _publish(broker, fanout, 3)
    conn = Recording("u")
    fanout.add(conn)
    broker.during = [(ROUTE, b'{"type":"x","n":9}', True)]       # 4: in the top already
    reply = _subscribe_since(fanout, conn, ("another-epoch", 1))
    assert not reply.ok and reply.reason == "epoch" and reply.top == 4
    assert conn.events("post_p") == []                           # all or nothing
    _publish(broker, fanout, 1, start=10)
    assert conn.events("post_p") == [5]


def test_a_gap_in_the_buffered_events_is_filled_from_history():
    broker, fanout, epoch, conn = _scene(2)
    # after the snapshot (1, 2): 3 and 4 are stored but never come live, 5 comes live
    broker.during = [(ROUTE, b'{"type":"x","n":%d}' % n, LOST if n < 4 else False) for n in range(2, 5)]
    reply = _subscribe_since(fanout, conn, (epoch, 0))
    assert reply.ok and reply.top == 2
    assert conn.events("post_p") == [1, 2, 3, 4, 5]               # the gap read again, 5 once


def test_a_union_goes_under_the_first_held_stream_and_is_deduped_there():
    broker, fanout = _setup()
    conn = Recording("u")
    fanout.add(conn)
    fanout.subscribe(conn, "post_p")
    broker.publish(Route(channels=("post_p",), users=("u",)), b'{"type":"x"}')
    broker.publish(Route(users=("u",)), b'{"type":"y"}')
    fanout._write_pending()
    assert [(f["stream"], f["offset"]) for f in conn.frames] == [("post_p", 1), ("user_u", 2)]


def test_legacy_connections_get_flat_frames_and_track_positions():
    broker, fanout = _setup()
    conn = Recording("u", protocol=None)
    fanout.add(conn)
    fanout.subscribe(conn, "post_p")
    _publish(broker, fanout, 3)
    assert conn.frames == [{"type": "x", "n": n} for n in range(3)]
    assert conn.streams.mark("post_p") == (broker.position("post_p")[0], 3)


def test_a_union_written_under_its_channel_is_not_replayed_on_the_user_stream():
    broker, fanout = _setup()
    conn = Recording("u")
    fanout.add(conn)
    fanout.join_position(conn, "user_u")                          # the welcome: user_u at 0
    fanout.subscribe(conn, "post_p")
    broker.publish(Route(users=("u",)), b'{"type":"a"}')          # user_u 1
    broker.publish(Route(channels=("post_p",), users=("u",)), b'{"type":"b"}')   # user_u 2, under post_p
    fanout._write_pending()
    replies = []
    fanout.recover(conn, "user_u", (broker.position("user_u")[0], 0), reply=replies.append)
    assert replies[0].ok
    assert [(f["stream"], f["data"]["type"]) for f in conn.frames] == [("user_u", "a"), ("post_p", "b")]


def test_v2_recipients_of_a_one_stream_batch_share_one_joined_write():
    broker, fanout = _setup()
    a, b = Recording("u"), Recording("w")
    sent = {}
    for conn in (a, b):
        fanout.add(conn)
        fanout.subscribe(conn, "post_p")
        conn.send = (lambda c: lambda data, frames=1: sent.setdefault(c.user_id, []).append(data)
                     or Recording.send(c, data, frames))(conn)
    _publish(broker, fanout, 3)
    assert sent["u"][0] is sent["w"][0]                   # one bytes object for both
    assert a.events("post_p") == b.events("post_p") == [1, 2, 3]
    assert a.streams.mark("post_p") == (broker.position("post_p")[0], 3)


def test_a_shared_batch_overlapping_what_was_written_is_deduped_per_event():
    broker, fanout = _setup()
    conn = Recording("u")
    fanout.add(conn)
    fanout.subscribe(conn, "post_p")
    _publish(broker, fanout, 2)
    epoch = broker.position("post_p")[0]
    conn.streams.set_mark("post_p", (epoch, 3))           # as if a replay had sent up to 3
    _publish(broker, fanout, 3, start=2)                  # offsets 3, 4, 5
    assert conn.events("post_p") == [1, 2, 4, 5]
