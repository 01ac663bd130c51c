"""The Redis wire format, once: topic and stream names, the envelope and its decoding.

Used by the server (broker/redis.py) and by other processes (publisher.py) alike, so
the two can never drift apart. docs/PUBLISHING.md is the same format in prose.

- A *topic* is what a worker listens to: `channel:<key>` (`channel:post_P`) or
  `user:<id>`; on Redis it is the pub/sub channel `<prefix><topic>`
  (`fonana:rt:channel:post_P`).
- A *stream* is what a position belongs to (PROTOCOL.md 7): the channel key itself
  (`post_P`) or `user_<id>`. One topic is one stream.
- An *envelope* is the JSON published for one event: `{"event":E,"ts":T}` on one topic;
  a union (several topics) adds `"id"` and `"topics"`, and the same bytes go to each
  topic, so a worker delivers the first copy to all listed topics and drops the rest.
  An envelope with positions (what the server and publisher.py send, built by the
  publish script of redis_history.py) always has `id` and `topics`, and `"pos"`:
  {stream: [epoch, offset]}; the same bytes are kept in each stream's history.
  `envelope()` builds the bare form of PROTOCOL.md 5 (no positions).
"""
from __future__ import annotations

import math
import time
import uuid
from collections import OrderedDict

from .events import SERVER_FRAME_TYPES
from .wsframes import dumps, loads

DEFAULT_PREFIX = "fonana:rt:"
TOPIC_KINDS = ("channel:", "user:")
MAX_ENVELOPE_TOPICS = 64    # a union listing more is not a union (see Decoder.decode)
MAX_ID_LENGTH = 64
RECENT_IDS = 4096           # union ids already delivered (copies arrive back to back)


# ---- names -------------------------------------------------------------------------

def channel_topic(key: str) -> str:
    return "channel:" + key


def user_topic(user_id: str) -> str:
    return "user:" + user_id


def user_stream(user_id: str) -> str:
    """The stream of events addressed to a user: `user_U`."""
    return "user_" + user_id


def route_topics(route) -> list[str]:
    """The topics of an `events.Route`, channels first, then users (the route's order)."""
    return [channel_topic(k) for k in route.channels] + [user_topic(u) for u in route.users]


def topic_stream(topic: str) -> str:
    """`channel:post_P` -> `post_P`; `user:U` -> `user_U`."""
    if topic.startswith("channel:"):
        return topic[8:]
    return user_stream(topic[5:])


def stream_topic(stream: str) -> str:
    """The inverse of topic_stream (channel keys never start with `user_`)."""
    if stream.startswith("user_"):
        return "user:" + stream[5:]
    return "channel:" + stream


# ---- one published message ----------------------------------------------------------

class Message:
    """One publication as a worker receives it: what fanout turns into an Outgoing.

    `payload` is the flat event's JSON bytes; `topics` where it goes (the topic it
    arrived on first); `positions` is {stream: (epoch, offset)} when the publisher gave
    it positions, else empty. `before`: topics whose connections got this event from an
    earlier call of the same publication (a Cluster route over several slots,
    redis_history.py): they are not sent it again."""

    __slots__ = ("id", "payload", "topics", "published_at", "event", "positions", "outgoing", "before")

    def __init__(self, payload: bytes, topics, published_at=None, message_id=None,
                 event=None, positions=None, before=()):
        self.id = message_id                # None: the receiver names it when it needs to
        self.payload = payload
        self.topics = topics
        self.published_at = published_at
        self.event = event                  # the decoded event, when the receiver has it
        self.positions = positions or {}
        self.outgoing = None                # its Outgoing, once built (outgoing.Outgoing.of)
        self.before = before


# ---- encode -----------------------------------------------------------------------

def envelope(topics: list[str], payload: bytes, now: float | None = None,
             message_id: str | None = None) -> bytes:
    """The bytes PUBLISHed for one serialised event (`payload`, a JSON object).

    One topic: `{"event":E,"ts":T}`. Several: `{"event":E,"id":I,"topics":[...],"ts":T}`.
    `ts` (publish time, Unix seconds) feeds the publish-to-delivery histogram. Built by
    concatenation: the event is not parsed again."""
    ts = time.time() if now is None else now
    if len(topics) == 1:
        meta = {"ts": ts}
    else:
        if len(topics) > MAX_ENVELOPE_TOPICS:
            raise ValueError(f"a union reaches at most {MAX_ENVELOPE_TOPICS} topics")
        meta = {"id": message_id or uuid.uuid4().hex, "topics": list(topics), "ts": ts}
    return b'{"event":' + payload + b"," + dumps(meta)[1:]


# ---- decode -----------------------------------------------------------------------

class Drop(Exception):
    """A message from Redis that cannot be delivered; `reason` is a short code."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _own_part(topics: list[str], positions: dict) -> tuple[list[str], tuple]:
    """One call of a publication over several Cluster slots lists the whole route, every
    call's topics in call order, and positions only for its own: (its own topics, the
    earlier calls' topics). Each connection gets the event once, from the first call
    whose topics it holds."""
    own = [t for t in topics if topic_stream(t) in positions]
    if not own:
        return topics, ()
    first = topics.index(own[0])
    return own, tuple(t for t in topics[:first] if t not in own)


def _positions(pos) -> dict:
    """`"pos":{stream: [epoch, offset]}` of a positioned envelope (redis_publish.lua) as
    {stream: (epoch, offset)}; anything malformed means no positions (still delivered
    live, like a bare PUBLISH), never a drop."""
    if not isinstance(pos, dict) or not pos or len(pos) > MAX_ENVELOPE_TOPICS:
        return {}
    out = {}
    for stream, value in pos.items():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
                and 0 < len(value[0]) <= MAX_ID_LENGTH and type(value[1]) is int and value[1] > 0):
            return {}
        out[stream] = (value[0], value[1])
    return out


class Decoder:
    """Untrusted envelopes -> Messages, remembering recent union ids (one per worker)."""

    def __init__(self, recent: int = RECENT_IDS):
        self._recent: OrderedDict = OrderedDict()
        self._max = recent

    def decode(self, topic: str, data: bytes) -> Message | None:
        """The Message to deliver, None for another copy of a union already delivered;
        raises Drop for anything malformed."""
        return self._decode(topic, data, True)

    def decode_stored(self, stream: str, data: bytes) -> Message:
        """An envelope read back from `stream`'s history (redis_history.py): the same
        checks, but its id is not remembered, so a replay never makes this worker drop
        a live copy, and an id already seen does not hide it. Raises Drop."""
        return self._decode(stream_topic(stream), data, False)

    def _decode(self, topic: str, data: bytes, remember: bool) -> Message | None:
        try:
            env = loads(data)          # standard JSON only: NaN or a lone surrogate is dropped here
        except ValueError:             # UnicodeDecodeError is a ValueError
            raise Drop("not_json") from None
        if not isinstance(env, dict):
            raise Drop("not_an_object")
        event = env.get("event")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not event["type"]:
            raise Drop("bad_event")
        if event["type"] in SERVER_FRAME_TYPES:       # as the API refuses it (a raw PUBLISH skips the API)
            raise Drop("server_frame_type")
        topics = [topic]
        message_id = env.get("id")
        if message_id is not None:
            if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_ID_LENGTH:
                raise Drop("bad_id")
            listed = env.get("topics")
            # The cap is checked BEFORE the id is remembered: a list over the cap is not
            # a union, so each copy goes to its own topic (nothing is lost; a connection
            # holding two of them may see it twice) instead of the first copy reaching
            # one audience and every other copy being dropped as a duplicate.
            if isinstance(listed, list) and len(listed) <= MAX_ENVELOPE_TOPICS:
                if remember:
                    if message_id in self._recent:
                        return None                 # another copy of a union we delivered
                    self._recent[message_id] = None
                    if len(self._recent) > self._max:
                        self._recent.popitem(last=False)
                # The listed order (the route's), so every worker picks the same first
                # stream for a v2 frame; the topic it arrived on is kept even if unlisted.
                topics = []
                for other in listed:
                    if isinstance(other, str) and other.startswith(TOPIC_KINDS) and other not in topics:
                        topics.append(other)
                if topic not in topics:
                    topics.insert(0, topic)
            else:
                message_id = None
        published_at = env.get("ts")
        if not isinstance(published_at, (int, float)) or isinstance(published_at, bool) \
                or not math.isfinite(published_at):
            published_at = None
        positions = _positions(env.get("pos"))
        before = ()
        if message_id is not None and positions and len(positions) < len(topics):
            topics, before = _own_part(topics, positions)
        return Message(dumps(event), topics, published_at, message_id, event, positions, before)
