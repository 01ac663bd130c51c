"""An Outgoing kept on its message (a replay's, Outgoing.of) leaves no reference cycle:
the message and its frames go by reference counting once the history lets go of it,
not at the garbage collector's next full collection (bench/connection_cycles.py)."""
from __future__ import annotations

import gc

from fonana_realtime.outgoing import Outgoing
from fonana_realtime.wire import Message


def unreachable_after(make) -> list:
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        make()
        gc.collect()
        return [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_a_replayed_message_and_its_outgoing_are_freed_by_reference_counting():
    def replay(message_id):
        message = Message(b'{"type":"x"}', ["channel:post_p"], message_id=message_id)
        out = Outgoing.of(message)
        assert Outgoing.of(message) is out and out.id == message.id
    assert unreachable_after(lambda: replay("m1")) == []
    assert unreachable_after(lambda: replay(None)) == []       # named when it is kept


def test_outgoings_of_one_unnamed_message_share_the_id_it_gets():
    message = Message(b'{"type":"x"}', ["channel:post_p"])
    live = Outgoing(message)
    kept = Outgoing.of(message)
    assert live.id == kept.id == message.id is not None
