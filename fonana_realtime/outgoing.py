"""One event on its way out of this worker, built ONCE per worker, never per recipient.

An `Outgoing` holds everything a connection may need to write for one published
event: the legacy frame (the flat event, byte for byte what legacy clients always
got), the v2 `event` frame for each stream of its route (built on first use, then
shared by every v2 recipient), its positions, and what issue 10's pacing needs to
know about it (`type`, `conflate`).
"""
from __future__ import annotations

import json
import uuid

from .wire import topic_stream
from .wsframes import dumps, text_frame

# Which waiting legacy frames a newer one of the same type may replace (PROTOCOL.md 8):
# type -> (conflation prefix, the event field naming the thing whose state it carries).
CONFLATE_BY = {
    "post_liked": ("post:", "postId"),
    "post_unliked": ("post:", "postId"),
    "creator_updated": ("creator:", "creatorId"),
    "feed_update": ("feed:", "userId"),
}


class SharedV2:
    """The v2 frames of a batch of events on ONE stream, joined on first use and then
    shared by every v2 recipient of the batch (like the joined legacy frames)."""

    __slots__ = ("outgoings", "stream", "_joined")

    def __init__(self, outgoings, stream: str):
        self.outgoings = outgoings
        self.stream = stream
        self._joined = None

    def joined(self) -> bytes:
        if self._joined is None:
            self._joined = b"".join(o.v2_frame(self.stream) for o in self.outgoings)
        return self._joined


class Outgoing:
    __slots__ = ("_message", "_id", "payload", "topics", "before", "streams", "published_at", "positions",
                 "legacy", "_event", "_v2", "_conflate")

    @classmethod
    def of(cls, message) -> "Outgoing":
        """The message's Outgoing, built on first use: a live delivery and every replay
        of the same held message share its frames."""
        out = message.outgoing
        if out is None:
            if message.id is None:      # named now: kept on the message, it needs no way back
                message.id = uuid.uuid4().hex   # to it (a reference cycle, freed only by the gc)
            out = message.outgoing = cls(message)
        return out

    def __init__(self, message):
        # Only while the message has no id: `id` names it once for every Outgoing of it.
        self._message = message if message.id is None else None
        self.payload = message.payload          # the flat event, JSON bytes
        self.topics = message.topics            # route order: channels, then users
        self.before = message.before            # got it from an earlier call (wire.Message)
        self.streams = [topic_stream(t) for t in message.topics]
        self.published_at = message.published_at
        self.positions = message.positions      # {stream: (epoch, offset)}; empty if none
        self.legacy = text_frame(message.payload)
        self._id = message.id
        self._event = message.event
        self._v2: dict | None = None
        self._conflate = None                   # see conflate

    @property
    def id(self) -> str:
        message = self._message
        if message is None:
            return self._id
        if message.id is None:              # named once: every Outgoing of it shares the id
            message.id = uuid.uuid4().hex
        self._id, self._message = message.id, None
        return self._id

    @property
    def event(self) -> dict:
        if self._event is None:
            self._event = json.loads(self.payload)
        return self._event

    @property
    def type(self) -> str:
        return self.event["type"]

    @property
    def conflate(self) -> str | bool:
        """Events with the same key carry the same state: a newer one may replace a
        waiting older one (`"post:"+postId` for post_liked and post_unliked, ...); False
        when the event conflates with nothing. Worked out once per event, not once per
        legacy recipient (pacing.py reads it per connection)."""
        key = self._conflate
        if key is None:
            rule = CONFLATE_BY.get(self.event["type"])
            value = None if rule is None else self.event.get(rule[1])
            key = self._conflate = rule[0] + value if isinstance(value, str) else False
        return key

    def v2_frame(self, stream: str) -> bytes:
        """`{"type":"event","id","stream","offset","epoch","data"}` for `stream`, built
        once per event and stream. An event published without positions (a bare
        PUBLISH, PROTOCOL.md 5) has no offset/epoch: it is not in any history."""
        frames = self._v2
        if frames is None:
            frames = self._v2 = {}
        frame = frames.get(stream)
        if frame is None:
            head = {"type": "event", "id": self.id, "stream": stream}
            position = self.positions.get(stream)
            if position is not None:
                head["offset"] = position[1]
                head["epoch"] = position[0]
            frame = frames[stream] = text_frame(dumps(head)[:-1] + b',"data":' + self.payload + b"}")
        return frame
