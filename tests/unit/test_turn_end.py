"""turn_end, metrics.Tally and the log handler's flush: per-turn work put off and done once
(pure logic, small fakes; the gevent loop is the real one of this test process)."""
import logging

import gevent
import pytest
from prometheus_client import CollectorRegistry, Histogram

from fonana_realtime import logs, turn_end
from fonana_realtime.metrics import Tally


class FakeMetric:
    def __init__(self):
        self.incs = []

    def inc(self, amount=1):
        self.incs.append(amount)


@pytest.fixture
def deferring():
    turn_end.start()
    try:
        yield
    finally:
        turn_end._loop = None          # the rest of the suite runs without a worker's loop


def test_outside_a_worker_a_step_is_written_at_once():
    tally, metric = Tally(), FakeMetric()
    tally.step(metric)
    tally.step(metric, 2)
    assert metric.incs == [1, 2] and not tally.pending


def test_in_a_worker_the_steps_of_one_turn_are_written_once_at_its_end(deferring):
    tally, a, b = Tally(), FakeMetric(), FakeMetric()
    for _ in range(5):
        tally.step(a)
    tally.step(b, 3)
    tally.step(b, -3)                  # a gauge back where it was: nothing to write
    assert a.incs == [] and tally.pending
    gevent.sleep(0)                    # the loop runs its callbacks
    assert a.incs == [5] and b.incs == [] and not tally.pending
    tally.step(a)
    gevent.sleep(0)
    assert a.incs == [5, 1]


def test_histogram_observations_of_one_turn_land_in_their_buckets(deferring):
    hist = Histogram("t_seconds", "t", buckets=(0.1, 1.0), registry=CollectorRegistry())
    tally = Tally()
    for value in (0.05, 0.5, 0.5, 3.0):
        tally.observe(hist, value)
    assert hist._sum.get() == 0
    gevent.sleep(0)
    assert [b.get() for b in hist._buckets] == [1, 2, 1] and hist._sum.get() == pytest.approx(4.05)


class FakeStream:
    def __init__(self):
        self.lines, self.flushes = [], 0

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        self.flushes += 1


def _record(level, msg="m"):
    return logging.LogRecord("t", level, __file__, 1, msg, None, None)


def test_log_lines_of_one_turn_are_flushed_once_and_errors_at_once(deferring):
    stream = FakeStream()
    handler = logs.JsonLinesHandler(stream=stream)
    handler.setFormatter(logs.JsonFormatter())
    for i in range(3):
        handler.handle(_record(logging.INFO, f"line {i}"))
    assert len(stream.lines) == 3 and stream.flushes == 0
    gevent.sleep(0)
    assert stream.flushes == 1
    handler.handle(_record(logging.INFO))
    handler.handle(_record(logging.ERROR, "boom"))
    assert stream.flushes == 2          # the error went out at once, the info line with it


def test_outside_a_worker_every_log_line_is_flushed_at_once():
    stream = FakeStream()
    handler = logs.JsonLinesHandler(stream=stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.handle(_record(logging.INFO))
    handler.handle(_record(logging.INFO))
    assert stream.flushes == 2
