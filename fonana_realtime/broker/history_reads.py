"""What the Redis broker reads from history (redis_history.py): a stream's position, a
client's recovery, the positions read before a stream's first SUBSCRIBE (its baseline)
and what a catch-up must hand on after a lost link. The decisions (marks, baselines, which
answer means what) are catchup.py's; this only reads Redis and decodes what it stored.
"""
from __future__ import annotations

import logging

import redis

from .. import wire
from ..history import UNAVAILABLE, Recovery

log = logging.getLogger("fonana_realtime.broker")

CATCHUP_BATCH = 500         # streams per pipelined history read while catching up


class HistoryReads:
    def __init__(self, store, recovery_max: int):
        self.store = store                  # a redis_history.RedisHistory
        self.recovery_max = recovery_max
        # stored envelopes only: decode_stored remembers no id, so this one never hides
        # a live copy from the listener's decoder
        self._decoder = wire.Decoder()

    def position(self, stream: str) -> tuple:
        """(epoch, top) of `stream`, creating its epoch when it has none; (None, 0) while
        Redis does not answer (like a broker without history)."""
        try:
            return self.store.position(stream)
        except redis.RedisError:
            return None, 0

    def history(self, stream: str, epoch, since: int, limit: int):
        """The events of `stream` after `since` of `epoch` (wire.Messages, positions and
        ids as their live copies had them), all or nothing; reason `unavailable` while
        Redis does not answer."""
        try:
            rec = self.store.since(stream, epoch if isinstance(epoch, str) else "", since, limit)
        except redis.RedisError:
            return Recovery(False, None, 0, reason=UNAVAILABLE)
        if not rec.ok:
            return Recovery(False, rec.epoch, rec.top, reason=rec.reason)
        events = self.stored(stream, rec.entries)
        if len(events) != len(rec.entries):     # cannot happen for what the script stored
            return Recovery(False, rec.epoch, rec.top, reason=UNAVAILABLE)
        return Recovery(True, rec.epoch, rec.top, events)

    def baselines(self, catchup, streams):
        """Before a stream's first SUBSCRIBE: its position now. Everything after it that
        this worker does not receive live is what a catch-up reads from history; nothing
        at or before it can arrive on the new subscription, so it never hides a live one."""
        streams = catchup.unmarked(streams)
        if not streams or not self.store.size:
            return
        try:
            for start in range(0, len(streams), CATCHUP_BATCH):
                chunk = streams[start:start + CATCHUP_BATCH]
                for stream, position in zip(chunk, self.store.positions(chunk)):
                    catchup.baseline(stream, position)
        except redis.RedisError as exc:
            # Subscribing still works; these streams just cannot be caught up after a
            # drop until their next message gives them a mark.
            log.warning("redis: stream positions unreadable before subscribing",
                        extra={"event": "broker_baseline_failed", "error": type(exc).__name__,
                               "streams": len(streams)})

    def missed(self, catchup, hears) -> tuple[list, dict]:
        """Per held stream with a mark: its missed events (lists of Messages, each in
        offset order), and how many streams could not be recovered, by reason. Raises
        redis.RedisError if history could not be read (the link must start over)."""
        requests = catchup.requests(hears)
        if not requests or not self.store.size:
            return [], {}
        store, limit = self.store, self.recovery_max
        first_held = catchup.first_held()
        replayed, lost = [], {}
        try:
            for again in (False, True):     # a stream whose epoch changed: read its new epoch
                retry = []
                for start in range(0, len(requests), CATCHUP_BATCH):
                    chunk = requests[start:start + CATCHUP_BATCH]
                    for (stream, _, _), rec in zip(chunk, store.since_many(chunk, limit)):
                        if rec.ok:
                            replayed.append(self.stored(stream, rec.entries))
                            continue
                        request = catchup.settle(stream, rec, first_held, lost, again=again)
                        if request is not None:
                            retry.append(request)
                requests = retry
                if not requests:
                    break
        except redis.RedisError as exc:
            # Redis answered the SUBSCRIBEs but not this. Going live now would hand on the
            # held live messages and move the marks past the events still unread: lost to
            # every connected client. The error ends the link instead (the listener
            # reconnects with back-off); the marks have not moved, so the next link reads
            # the same history again. Nothing is lost, so fonana_rt_broker_catchup_failed
            # (streams whose events left history) does not count it; the reconnect does.
            log.warning("redis: history unreadable while catching up; the link starts over", extra={
                "event": "broker_catchup_failed", "error": type(exc).__name__})
            raise
        return replayed, lost

    def stored(self, stream: str, entries) -> list:
        out = []
        for entry in entries:
            try:
                out.append(self._decoder.decode_stored(stream, entry))
            except wire.Drop:                   # the script only stores what decodes
                pass
        return out
