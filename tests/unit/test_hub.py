"""The hub (a registry) and fanout's delivery logic on their own (pure logic:
connections are recorders, the broker a recorder or the in-process one)."""
from __future__ import annotations

from fonana_realtime.fanout import Fanout
from fonana_realtime.hub import Hub
from fonana_realtime.outgoing import Outgoing
from fonana_realtime.wire import Message, channel_topic, user_topic
from fonana_realtime.wsframes import text_frame


class Recorder:
    """A connection that records what `deliver` got: (joined legacy bytes, frame count)."""

    def __init__(self, user_id, accept=True):
        self.user_id = user_id
        self.channels = set()
        self.writes = []
        self.accept = accept

    def hold_channel(self, key):
        self.channels.add(key)

    def drop_channel(self, key):
        self.channels.discard(key)

    def drop_channels(self):
        self.channels.clear()

    def deliver(self, outgoings, joined_legacy=None, positions=None, shared_v2=None):
        if not self.accept:
            return False
        assert joined_legacy == b"".join(o.legacy for o in outgoings)
        self.writes.append((joined_legacy, len(outgoings)))
        return True


class RecordingBroker:
    def __init__(self):
        self.listened, self.unlistened, self.waited = [], [], []
        self.on_message = None

    def listen(self, topic):
        self.listened.append(topic)

    def wait_listening(self, topic):
        self.waited.append(topic)

    def unlisten(self, topic):
        self.unlistened.append(topic)


def _fanout(*conns):
    fanout = Fanout(Hub(), RecordingBroker())
    for c in conns:
        fanout.add(c)
    return fanout


def _out(topics, payload):
    return Outgoing(Message(payload, topics))


def F(payload):
    return text_frame(payload)


def test_a_batch_for_one_audience_is_one_write_per_connection():
    a, b = Recorder("a"), Recorder("b")
    fanout = _fanout(a, b)
    for c in (a, b):
        fanout.subscribe(c, "post_p")
    topics = [channel_topic("post_p")]
    batch = [_out(topics, b'"1"'), _out(topics, b'"2"'), _out(topics, b'"3"')]
    delivered, dropped = fanout.deliver_batch(batch)
    assert (delivered, dropped) == (6, 0)
    joined = F(b'"1"') + F(b'"2"') + F(b'"3"')
    assert a.writes == [(joined, 3)] and b.writes == [(joined, 3)]
    assert a.writes[0][0] is b.writes[0][0]            # one shared bytes object


def test_mixed_audiences_keep_publish_order_and_deliver_each_frame_once():
    a, b = Recorder("a"), Recorder("b")
    fanout = _fanout(a, b)
    fanout.subscribe(a, "post_p")
    fanout.subscribe(b, "post_q")
    p, q = [channel_topic("post_p")], [channel_topic("post_q")]
    union = [channel_topic("post_p"), user_topic("a")]       # a holds both: still once
    batch = [_out(p, b'"1"'), _out(q, b'"2"'), _out(union, b'"3"'), _out(p, b'"4"')]
    delivered, _ = fanout.deliver_batch(batch)
    assert a.writes == [(F(b'"1"') + F(b'"3"') + F(b'"4"'), 3)]
    assert b.writes == [(F(b'"2"'), 1)]
    assert delivered == 4


def test_refused_writes_are_counted_as_dropped():
    a, b = Recorder("a"), Recorder("b", accept=False)
    fanout = _fanout(a, b)
    for c in (a, b):
        fanout.subscribe(c, "post_p")
    topics = [channel_topic("post_p")]
    assert fanout.deliver_batch([_out(topics, b'"1"'), _out(topics, b'"2"')]) == (2, 2)


def test_last_leaver_stops_the_topic_and_first_joiner_starts_it():
    fanout = _fanout()
    broker = fanout.broker
    a, b = Recorder("a"), Recorder("a")
    fanout.add(a)
    fanout.add(b)
    fanout.subscribe(a, "post_p")
    fanout.subscribe(b, "post_p")
    assert broker.waited == ["user:a", "channel:post_p"]     # later joiners wait, never listen again
    fanout.remove(a)
    assert broker.unlistened == []
    fanout.remove(b)
    assert broker.listened == ["user:a", "channel:post_p"]
    assert sorted(broker.unlistened) == ["channel:post_p", "user:a"]


def test_the_hub_reports_first_and_last_and_never_calls_anyone():
    hub = Hub()
    a, b = Recorder("a"), Recorder("b")
    assert hub.add(a) is True and hub.add(Recorder("a")) is False
    assert hub.subscribe(a, "post_p") is True and hub.subscribe(b, "post_p") is False
    assert hub.subscribe(a, "post_p") is False                # already held: no change
    assert hub.unsubscribe(b, "post_p") is False and hub.unsubscribe(b, "post_p") is False
    assert hub.remove(a) == ["channel:post_p"]                # the other "a" keeps user:a
    assert hub.remove(a) == []


def test_a_publisher_that_never_yields_still_gets_its_events_written(monkeypatch):
    """Queued deliveries wait for the end of the event-loop turn, but at most MAX_BATCH
    of them: a greenlet publishing back to back writes each full batch itself.
    (The MAX_BATCH_SECONDS cut is held off here so a loaded machine cannot cut the batch
    early; the next test checks that cut on its own.)"""
    import gevent

    from fonana_realtime import fanout as fanout_module
    from fonana_realtime.broker.memory import MemoryBroker
    from fonana_realtime.events import Route
    from fonana_realtime.fanout import MAX_BATCH

    monkeypatch.setattr(fanout_module, "MAX_BATCH_SECONDS", 3600.0)
    a = Recorder("a")
    fanout = Fanout(Hub(), MemoryBroker())
    fanout.add(a)
    fanout.subscribe(a, "post_p")
    route = Route(channels=("post_p",))
    for n in range(MAX_BATCH + 3):                      # no yield in between
        fanout.broker.publish(route, b'{"n":%d}' % n)
    assert [frames for _, frames in a.writes] == [MAX_BATCH]
    gevent.sleep(0)                                     # the turn ends: the rest goes out
    assert [frames for _, frames in a.writes] == [MAX_BATCH, 3]


def test_a_batch_older_than_max_batch_seconds_is_written_by_the_next_publish(monkeypatch):
    import gevent

    from fonana_realtime import fanout as fanout_module
    from fonana_realtime.broker.memory import MemoryBroker
    from fonana_realtime.events import Route

    monkeypatch.setattr(fanout_module, "MAX_BATCH_SECONDS", 0.0)     # every batch is "old" at once
    a = Recorder("a")
    fanout = Fanout(Hub(), MemoryBroker())
    fanout.add(a)
    fanout.subscribe(a, "post_p")
    for n in range(3):                                  # no yield in between
        fanout.broker.publish(Route(channels=("post_p",)), b'{"n":%d}' % n)
    assert [frames for _, frames in a.writes] == [1, 1, 1]
    gevent.sleep(0)
    assert len(a.writes) == 3                           # nothing left over for the turn's end


def test_a_later_call_of_a_cross_slot_publication_skips_connections_an_earlier_call_reached():
    """Redis Cluster, an event for a post and a user in two slots: two calls (wire.Message
    `before`). `a` holds both streams and gets it once, from the first call; `b` holds
    only the user's and gets it from the second; `c` only the post's, from the first."""
    a, b, c = Recorder("u"), Recorder("u"), Recorder("v")
    fanout = _fanout(a, b, c)
    fanout.subscribe(a, "post_p")
    fanout.subscribe(c, "post_p")
    post, user = channel_topic("post_p"), user_topic("u")
    first = Outgoing(Message(b'"1"', [post]))
    second = Outgoing(Message(b'"1"', [user], before=(post,)))
    assert fanout.deliver_batch([first]) == (2, 0)
    assert fanout.deliver_batch([second]) == (1, 0)          # b only
    assert [len(r.writes) for r in (a, b, c)] == [1, 1, 1]
    fanout.deliver_batch([_out([post], b'"2"'), second, _out([post], b'"3"')])   # mixed audiences
    assert a.writes[-1] == (F(b'"2"') + F(b'"3"'), 2) and b.writes[-1] == (F(b'"1"'), 1)
