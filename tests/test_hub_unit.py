"""The hub's delivery logic on its own (pure logic: connections are recorders)."""
from __future__ import annotations

from fonana_realtime.hub import Hub, channel_topic, user_topic


class Recorder:
    def __init__(self, user_id, accept=True):
        self.user_id = user_id
        self.channels = set()
        self.writes = []
        self.accept = accept

    def send(self, data, frames=1):
        if not self.accept:
            return False
        self.writes.append((data, frames))
        return True


def _hub(*conns):
    hub = Hub()
    for c in conns:
        hub.add(c)
    return hub


def test_a_batch_for_one_audience_is_one_write_per_connection():
    a, b = Recorder("a"), Recorder("b")
    hub = _hub(a, b)
    for c in (a, b):
        hub.subscribe(c, "post_p")
    topics = [channel_topic("post_p")]
    delivered, dropped = hub.deliver_batch([(topics, b"1"), (topics, b"2"), (topics, b"3")])
    assert (delivered, dropped) == (6, 0)
    assert a.writes == [(b"123", 3)] and b.writes == [(b"123", 3)]


def test_mixed_audiences_keep_publish_order_and_deliver_each_frame_once():
    a, b = Recorder("a"), Recorder("b")
    hub = _hub(a, b)
    hub.subscribe(a, "post_p")
    hub.subscribe(b, "post_q")
    p, q = [channel_topic("post_p")], [channel_topic("post_q")]
    union = [channel_topic("post_p"), user_topic("a")]       # a holds both: still once
    delivered, _ = hub.deliver_batch([(p, b"1"), (q, b"2"), (union, b"3"), (p, b"4")])
    assert a.writes == [(b"134", 3)]
    assert b.writes == [(b"2", 1)]
    assert delivered == 4


def test_refused_writes_are_counted_as_dropped():
    a, b = Recorder("a"), Recorder("b", accept=False)
    hub = _hub(a, b)
    for c in (a, b):
        hub.subscribe(c, "post_p")
    topics = [channel_topic("post_p")]
    assert hub.deliver_batch([(topics, b"1"), (topics, b"2")]) == (2, 2)


def test_last_leaver_stops_the_topic_and_first_joiner_starts_it():
    started, stopped = [], []
    hub = Hub()
    hub.on_first, hub.on_last = started.append, stopped.append
    a, b = Recorder("a"), Recorder("a")
    hub.add(a)
    hub.add(b)
    hub.subscribe(a, "post_p")
    hub.subscribe(b, "post_p")
    hub.remove(a)
    assert stopped == []
    hub.remove(b)
    assert started == ["user:a", "channel:post_p"]
    assert sorted(stopped) == ["channel:post_p", "user:a"]


def test_a_publisher_that_never_yields_still_gets_its_events_written():
    """Queued deliveries wait for the end of the event-loop turn, but at most MAX_BATCH
    of them: a greenlet publishing back to back writes each full batch itself."""
    import gevent

    from fonana_realtime.broker import MAX_BATCH
    from fonana_realtime.broker.memory import MemoryBroker
    from fonana_realtime.events import Route

    a = Recorder("a")
    hub = _hub(a)
    hub.subscribe(a, "post_p")
    broker = MemoryBroker(hub)
    route = Route(channels=("post_p",))
    for n in range(MAX_BATCH + 3):                      # no yield in between
        broker.publish(route, b'{"n":%d}' % n)
    assert [frames for _, frames in a.writes] == [MAX_BATCH]
    gevent.sleep(0)                                     # the turn ends: the rest goes out
    assert [frames for _, frames in a.writes] == [MAX_BATCH, 3]
