"""batcher.Batcher: the keys one turn of the loop asks for go out as one fetch (pure logic;
the gevent loop is the real one of this test process, `fetch` a small function)."""
import gevent
import pytest
from gevent.event import Event

from fonana_realtime.batcher import Batcher


class Fetches:
    """A fetch that records each batch it was given and answers key -> key * 2."""

    def __init__(self, gate: Event | None = None, fail: BaseException | None = None):
        self.batches: list[list] = []
        self.greenlets: list = []        # the greenlet each batch was fetched in
        self.gate, self.fail = gate, fail

    def __call__(self, keys):
        self.batches.append(list(keys))
        self.greenlets.append(gevent.getcurrent())
        if self.gate is not None:
            self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return {k: k * 2 for k in keys if k != -1}


def turns_until(condition, turns=100):
    """Let the loop go round until `condition()` holds (bounded)."""
    for _ in range(turns):
        if condition():
            return True
        gevent.sleep(0)
    return condition()


def ask(batcher, keys):
    """Each key asked for by a greenlet of its own, all in one turn; their answers (or exceptions)."""
    greenlets = [gevent.spawn(batcher.get, k) for k in keys]
    gevent.joinall(greenlets, timeout=5)
    assert all(g.ready() for g in greenlets)
    return [g.value if g.successful() else g.exception for g in greenlets]


def test_the_keys_of_one_turn_are_one_fetch_and_each_caller_gets_its_own_answer():
    fetch = Fetches()
    answers = ask(Batcher(fetch), list(range(1, 51)))
    assert answers == [k * 2 for k in range(1, 51)]
    assert len(fetch.batches) == 1 and sorted(fetch.batches[0]) == list(range(1, 51))


def test_a_key_the_answer_lacks_gets_missing():
    fetch = Fetches()
    assert ask(Batcher(fetch, missing=False), [12, -1]) == [24, False]


def test_one_key_asked_twice_in_a_turn_is_fetched_once_and_both_get_it():
    fetch = Fetches()
    assert ask(Batcher(fetch), [7, 7, 8]) == [14, 14, 16]
    assert sorted(fetch.batches[0]) == [7, 8]


def test_a_batch_holds_at_most_max_keys():
    fetch = Fetches()
    assert ask(Batcher(fetch, max_keys=4, in_flight=10), list(range(10))) == [k * 2 for k in range(10)]
    assert [len(b) for b in fetch.batches] == [4, 4, 2]


def test_the_exception_of_a_fetch_reaches_every_caller_of_its_batch_and_the_next_batch_is_fresh():
    class Down(Exception):
        pass

    fetch = Fetches(fail=Down("database down"))
    batcher = Batcher(fetch)
    answers = ask(batcher, [1, 2, 3])
    assert all(isinstance(a, Down) for a in answers)
    fetch.fail = None                     # the database is back: nothing of the failure is kept
    assert ask(batcher, [1, 2]) == [2, 4]
    assert len(fetch.batches) == 2


def test_a_key_asked_while_its_batch_is_out_waits_for_a_fetch_started_after_it():
    gate = Event()
    fetch = Fetches(gate=gate)
    batcher = Batcher(fetch, in_flight=1)
    first = gevent.spawn(batcher.get, 5)
    assert turns_until(lambda: fetch.batches == [[5]])     # out, held at the gate
    later = [gevent.spawn(batcher.get, k) for k in (5, 6)]
    assert not turns_until(lambda: len(fetch.batches) > 1, turns=20)   # in_flight=1: it waits
    gate.set()
    gevent.joinall([first, *later], timeout=5)
    assert [first.value] + [g.value for g in later] == [10, 10, 12]
    assert fetch.batches == [[5], [5, 6]]  # 5 again: asked for after its first query started


def test_at_most_in_flight_batches_are_out_and_the_rest_gather_meanwhile():
    gate = Event()
    fetch = Fetches(gate=gate)
    batcher = Batcher(fetch, in_flight=2, max_keys=1)
    greenlets = [gevent.spawn(batcher.get, k) for k in range(6)]
    assert turns_until(lambda: len(fetch.batches) == 2)
    assert not turns_until(lambda: len(fetch.batches) > 2, turns=20)
    gate.set()
    gevent.joinall(greenlets, timeout=5)
    assert [g.value for g in greenlets] == [k * 2 for k in range(6)]
    assert len(fetch.batches) == 6


def test_a_killed_fetch_fails_its_callers_instead_of_leaving_them_waiting():
    gate = Event()
    fetch = Fetches(gate=gate)
    class Unavailable(Exception):
        pass

    batcher = Batcher(fetch, lost=Unavailable)
    caller = gevent.spawn(batcher.get, 1)
    assert turns_until(lambda: fetch.batches == [[1]])
    fetch.greenlets[0].kill(block=True)
    caller.join(timeout=5)
    assert caller.ready() and isinstance(caller.exception, Unavailable)
    gate.set()
    assert ask(batcher, [3]) == [6]        # the batcher goes on


def test_immediate_asks_at_once_in_the_callers_greenlet():
    fetch = Fetches()
    batcher = Batcher(fetch, missing=False, immediate=True)
    assert batcher.get(4) == 8 and batcher.get(-1) is False
    assert fetch.batches == [[4], [-1]] and fetch.greenlets == [gevent.getcurrent()] * 2
    fetch.fail = KeyError("gone")
    with pytest.raises(KeyError):
        batcher.get(5)


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        Batcher(Fetches(), max_keys=0)
    with pytest.raises(ValueError):
        Batcher(Fetches(), in_flight=0)
