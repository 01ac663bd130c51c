"""Positions and history in Redis (PROTOCOL.md 7): the publish script and the reads.

Plain Python (no gevent), so the server's broker and `publisher.py` share it. One
publication is one call of `redis_publish.lua` (shipped beside this file so processes in
other languages load the same script): per stream of its route, the next offset, the
history append and the PUBLISH, atomically. Reads are small scripts too, so the meta and
the history they check are read in one atomic step.

Keys, hash-tagged per stream so they share a slot on Redis Cluster:
  `<prefix>{<stream>}:m`  hash `e` (epoch), `t` (top offset), `r` (the term: the run id of
                          the Redis process that last wrote it); TTL meta_seconds (86400)
                          once published to, GHOST_SECONDS (60) before
  `<prefix>{<stream>}:h`  list of envelopes, the newest last, at most `size` (100);
                          TTL history seconds (300), refreshed by every publish

State is made by publishing. A position read of a stream nobody published to still
creates its meta (its epoch is what the subscriber is told, and what a first publish must
keep so that subscriber's recovery still works), but as a *ghost*: `t` = 0 and a TTL of
GHOST_SECONDS, renewed by every read and, while a worker holds the stream, by that worker
(`keep_ghosts`); the first publish gives it the full meta lifetime. With 24 h for every
read, one user subscribing to ids nobody publishes to made 355 keys/s of 376 B that
stayed a day (issue 18: ~30M keys, 11 GB); now such a key lives at most a minute after
its last subscriber. A client that comes back later with that epoch is told
`recovered: false` (reason `epoch`), as for any forgotten meta: never wrong events.

Why a LIST and not a Redis Stream (measured with MEMORY USAGE on redis 7.0, envelopes of
~400 bytes): a list holding 1 event takes 600 B, a stream 4,768 B (a stream preallocates
a 4 KB listpack node); 100 events: list 43.9 KB, stream 55.9 KB. Most channels see a
handful of events in five minutes, so the list is 4-8x smaller where it matters, and
offsets are dense (1, 2, 3, ...), so "the events after offset N" is an index range of
the list (the last top-N entries): a stream's ID lookup buys nothing here. The meta hash
is ~120 B, and it is all an idle stream costs (docs/PUBLISHING.md "Measured").
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

from redis.crc import key_slot
from redis.exceptions import NoScriptError

from .broker.link_cluster import node_pipeline, on_cluster

from .history import AHEAD, EPOCH, EXPIRED, TOO_MANY, TRIMMED
from .wire import topic_stream     # the script derives streams from topics the same way

KEEP_BATCH = 500             # streams per pipeline of keep_ghosts
PUBLISH_SCRIPT_PATH = Path(__file__).with_name("redis_publish.lua")
PUBLISH_SCRIPT = PUBLISH_SCRIPT_PATH.read_text()

# A meta nobody published to (`t` = 0) lives this long after its last read or keep_ghosts.
GHOST_SECONDS = 60

# The writer's term: the run id of the Redis process running the script. A replica
# promoted by a failover, or a master restarted, is another process, so another term.
# Replication is asynchronous: the new master may lack the last writes its predecessor
# acknowledged, and would hand out their offsets again for other events. So a stream whose
# meta was last written under another term starts a new epoch at its first use under this
# one (PROTOCOL.md 10): a client that recovers from the old epoch is told recovered:false
# instead of being given other events under offsets it already has, or none for the lost
# ones. A meta without a term (written before terms) adopts the current one.
_TERM_LUA = """
local term = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
"""

# KEYS meta, hist; ARGV meta_seconds (first). The stream's epoch in `e`, created when the
# meta is absent (a new stream, or one whose meta expired or was lost with Redis's data)
# or was written under another term, its history dropped then (it belongs to the lost
# epoch); the meta's lifetime renewed: the full one once published to, GHOST_SECONDS
# before. The beginning of both read scripts.
_EPOCH_LUA = _TERM_LUA + """
local meta = redis.call('HMGET', KEYS[1], 'e', 'r')
local e, r = meta[1], meta[2]
if not e or (r and r ~= term) then
  local now = redis.call('TIME')
  e = string.format('%x%05x', tonumber(now[1]), tonumber(now[2]))
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 't', 0, 'r', term)
elseif not r then
  redis.call('HSET', KEYS[1], 'r', term)
end
if redis.call('HGET', KEYS[1], 't') == '0' then
  redis.call('EXPIRE', KEYS[1], """ + str(GHOST_SECONDS) + """)
else
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
"""

# KEYS meta, hist; ARGV meta_seconds. The stream's (epoch, top).
POSITION_SCRIPT = _EPOCH_LUA + """
return {e, tonumber(redis.call('HGET', KEYS[1], 't'))}
"""

# KEYS meta, hist; ARGV meta_seconds, epoch, offset, limit.
# Reply {epoch, top, history length, redis time "s.us", entries...}; the entries (the last
# top-offset envelopes) only when the recovery can succeed on epoch, count and length.
SINCE_SCRIPT = _EPOCH_LUA + """
local top = tonumber(redis.call('HGET', KEYS[1], 't'))
local len = redis.call('LLEN', KEYS[2])
local now = redis.call('TIME')
local reply = {e, top, len, now[1] .. '.' .. string.format('%06d', tonumber(now[2]))}
local missed = top - tonumber(ARGV[3])
if e == ARGV[2] and missed > 0 and missed <= tonumber(ARGV[4]) and missed <= len then
  local entries = redis.call('LRANGE', KEYS[2], -missed, -1)
  for i = 1, #entries do reply[#reply + 1] = entries[i] end
end
return reply
"""

# Why a read fails: the in-process history's reasons (history.py), so metrics and logs name them alike.
__all__ = ["AHEAD", "EPOCH", "EXPIRED", "TOO_MANY", "TRIMMED", "Published", "RedisHistory", "StoredRead"]


def meta_key(prefix: str, stream: str) -> str:
    return f"{prefix}{{{stream}}}:m"


def history_key(prefix: str, stream: str) -> str:
    return f"{prefix}{{{stream}}}:h"


class Published(int):
    """What one publication returns: the PUBLISH receiver count (an int, as before),
    with `.id`, `.ts` (Redis time), `.positions` {stream: (epoch, offset)} in the
    route's order."""

    def __new__(cls, receivers: int, message_id: str, ts: float, positions: dict):
        self = super().__new__(cls, receivers)
        self.id = message_id
        self.ts = ts
        self.positions = positions
        return self

    @property
    def offsets(self) -> dict:
        """{stream: offset}, the shape `POST /api/events` answers per event."""
        return {stream: offset for stream, (_, offset) in self.positions.items()}


class StoredRead:
    """The answer of `since`: either every event after the offset (`ok`, `entries` the
    envelopes in offset order, possibly none) or not recoverable (`reason`), and in both
    cases the stream's current `epoch` and `top`. Its arguments come in the order of
    history.Recovery's, which the broker builds from it (envelopes decoded to messages)."""

    __slots__ = ("ok", "reason", "epoch", "top", "entries")

    def __init__(self, ok: bool, epoch: str, top: int, entries: list | None = None, reason: str | None = None):
        self.ok, self.epoch, self.top, self.reason = ok, epoch, top, reason
        self.entries = [] if entries is None else entries

    def __repr__(self):
        return (f"StoredRead(ok={self.ok}, reason={self.reason}, epoch={self.epoch!r}, "
                f"top={self.top}, entries={len(self.entries)})")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _envelope_ts(entry: bytes) -> float | None:
    try:
        ts = json.loads(entry).get("ts")
    except (ValueError, AttributeError):
        return None
    return ts if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None


class RedisHistory:
    """Publish with positions and read history, on a redis-py client (`redis.Redis`).

    Scripts run by EVALSHA; redis-py's Script loads them again on NOSCRIPT (a Redis
    restarted or SCRIPT FLUSHed), which is safe: NOSCRIPT means nothing ran."""

    def __init__(self, client, prefix: str, size: int = 100, seconds: int = 300,
                 meta_seconds: int = 86400):
        if size < 0 or seconds < 1 or meta_seconds < 1:
            raise ValueError("history size must be >= 0 and its lifetimes >= 1 s")
        self.client = client
        self.prefix = prefix
        self.size = size
        self.seconds = seconds
        self.meta_seconds = meta_seconds
        self._scripts = None            # registered on first use

    def _script(self, index: int):
        if self._scripts is None:
            self._scripts = tuple(self.client.register_script(text)
                                  for text in (PUBLISH_SCRIPT, POSITION_SCRIPT, SINCE_SCRIPT))
        return self._scripts[index]

    @property
    def _publish(self):
        return self._script(0)

    @property
    def _position(self):
        return self._script(1)

    @property
    def _since(self):
        return self._script(2)

    def _keys(self, stream: str) -> list[str]:
        return [meta_key(self.prefix, stream), history_key(self.prefix, stream)]

    # ---- publish ------------------------------------------------------------------

    def publish_args(self, topics: list[str], payload: bytes, message_id: str | None = None,
                     route: list[str] | None = None):
        """KEYS and ARGV of one publish call (for callers that pipeline it): it writes the
        streams of `topics`; `route` (a Cluster publication over several slots: every
        call's topics, in the order of the calls) is what its envelope lists."""
        keys: list[str] = []
        for topic in topics:
            keys += self._keys(topic_stream(topic))
        listed = topics if route is None else [t if t in topics else "^" + t for t in route]
        args = [payload, message_id if message_id is not None else uuid.uuid4().hex,
                self.size, self.seconds, self.meta_seconds, self.prefix, *listed]
        return keys, args

    def publish(self, topics: list[str], payload: bytes, message_id: str | None = None,
                client=None) -> Published:
        """Publish one serialised event (JSON object bytes) to `topics` with positions.
        Raises redis.ResponseError for input the script refuses (nothing was published).

        On Redis Cluster a route whose streams are in several hash slots is one call per
        slot (a call's keys must share one), in the route's order: each call is atomic in
        its slot and a publication of its own (the id gets `.2`, `.3`… after the first).
        Every call's envelope lists the whole route, the calls' topics in call order, so a
        worker delivers a later call's copy only to connections that hold none of an
        earlier call's topics (wire.Decoder: `before`): a connection holding streams of
        two slots gets the event once, from the first. A call that fails after others
        succeeded raises: those streams have it, the others not (PROTOCOL.md 10)."""
        groups = self._slot_groups(topics)
        if len(groups) == 1:
            keys, args = self.publish_args(topics, payload, message_id)
            reply = self._publish(keys=keys, args=args, client=client)
            return self.published(topics, reply)
        message_id = message_id if message_id is not None else uuid.uuid4().hex
        route = [topic for group in groups for topic in group]
        receivers, positions, first = 0, {}, None
        for n, group in enumerate(groups):
            keys, args = self.publish_args(group, payload, message_id if n == 0 else f"{message_id}.{n + 1}",
                                           route)
            part = self.published(group, self._publish(keys=keys, args=args, client=client))
            first = first or part
            receivers += part
            positions.update(part.positions)
        return Published(receivers, first.id, first.ts,
                         {topic_stream(t): positions[topic_stream(t)] for t in topics})

    def _slot_groups(self, topics: list[str]) -> list[list[str]]:
        """`topics` by the hash slot of their stream's keys (Redis Cluster), in the route's
        order; one group elsewhere."""
        if len(topics) < 2 or not on_cluster(self.client):
            return [topics]
        groups: dict[int, list[str]] = {}
        for topic in topics:
            groups.setdefault(key_slot(meta_key(self.prefix, topic_stream(topic)).encode()), []).append(topic)
        return list(groups.values())

    @staticmethod
    def published(topics: list[str], reply) -> Published:
        """The script's reply as a Published."""
        receivers, message_id, ts = int(reply[0]), _text(reply[1]), _text(reply[2])
        positions = {}
        for i, topic in enumerate(topics):
            positions[topic_stream(topic)] = (_text(reply[3 + 2 * i]), int(reply[4 + 2 * i]))
        return Published(receivers, message_id, float(ts), positions)

    # ---- reads --------------------------------------------------------------------

    def position(self, stream: str) -> tuple[str, int]:
        """(epoch, top offset) of a stream; a stream never published to gets its epoch now."""
        epoch, top = self._position(keys=self._keys(stream), args=[self.meta_seconds])
        return _text(epoch), int(top)

    def positions(self, streams) -> list[tuple[str, int]]:
        """`position` for many streams, in one pipeline."""
        streams = list(streams)
        if not streams:
            return []
        replies = self._read_pipelined(self._position, [(self._keys(stream), [self.meta_seconds])
                                                        for stream in streams])
        return [(_text(epoch), int(top)) for epoch, top in replies]

    def keep_ghosts(self, streams) -> None:
        """Renew the ghost metas of `streams` (held by this worker) for GHOST_SECONDS, in
        pipelines of `KEEP_BATCH`: `EXPIRE ... GT` only lengthens a TTL (a published
        meta's day is left alone) and creates nothing (a lost meta stays lost). Called
        every GHOST_SECONDS / 3, so a held ghost never expires while Redis answers."""
        streams = list(streams)
        for start in range(0, len(streams), KEEP_BATCH):
            with self.client.pipeline(transaction=False) as pipe:
                for stream in streams[start:start + KEEP_BATCH]:
                    pipe.expire(meta_key(self.prefix, stream), GHOST_SECONDS, gt=True)
                pipe.execute()

    def _read_pipelined(self, script, calls) -> list:
        """One read script run for each (keys, args) in `calls`, in one round trip.

        By EVALSHA queued on the pipeline, not through redis-py's Script: a pipeline
        holding Scripts first asks Redis `SCRIPT EXISTS` in a round trip of its own, on
        every execute (one round trip costs a worker ~80 us of CPU with redis-py under
        gevent, issue 11). On NOSCRIPT (a Redis restarted or SCRIPT FLUSHed: nothing ran)
        the script is loaded and the reads, which change nothing a second run would not,
        are sent again once."""
        try:
            return self._evalsha_pipelined(script.sha, calls)
        except NoScriptError:
            return self._evalsha_pipelined(self.client.script_load(script.script), calls)

    def _evalsha_pipelined(self, sha: str, calls) -> list:
        if on_cluster(self.client):
            return self._evalsha_per_node(sha, calls)
        with self.client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(sha, len(keys), *keys, *args)
            return pipe.execute()

    def _evalsha_per_node(self, sha: str, calls) -> list:
        """Redis Cluster: redis-py's cluster pipeline refuses EVALSHA, so one plain pipeline
        per master, each holding the calls whose slot it serves (one round trip per
        master, not per call); the replies back in `calls`' order."""
        calls = list(calls)
        by_node: dict = {}
        for i, (keys, args) in enumerate(calls):
            name, pipe = node_pipeline(self.client, keys[0])
            entry = by_node.setdefault(name, (pipe, []))
            entry[0].evalsha(sha, len(keys), *keys, *args)
            entry[1].append(i)
        replies: list = [None] * len(calls)
        for pipe, indexes in by_node.values():
            with pipe:
                for i, reply in zip(indexes, pipe.execute()):
                    replies[i] = reply
        return replies

    def since(self, stream: str, epoch: str, offset: int, limit: int) -> StoredRead:
        """Every event of `stream` after `offset` of `epoch`, all or nothing: at most
        `limit` of them (more is `too_many`), none older than the history's lifetime."""
        reply = self._since(keys=self._keys(stream),
                            args=[self.meta_seconds, epoch, int(offset), int(limit)])
        return self.recovery(reply, epoch, int(offset), int(limit))

    def since_many(self, requests, limit: int) -> list[StoredRead]:
        """`since` for many (stream, epoch, offset) at once, in one pipeline (each read
        is atomic on its own): a worker catching up every topic it holds."""
        requests = list(requests)
        if not requests:
            return []
        replies = self._read_pipelined(self._since, [
            (self._keys(stream), [self.meta_seconds, epoch, int(offset), int(limit)])
            for stream, epoch, offset in requests])
        return [self.recovery(reply, epoch, int(offset), int(limit))
                for reply, (_, epoch, offset) in zip(replies, requests)]

    def recovery(self, reply, epoch: str, offset: int, limit: int) -> StoredRead:
        current, top, length, now = _text(reply[0]), int(reply[1]), int(reply[2]), float(reply[3])
        entries = list(reply[4:])
        missed = top - offset

        def fail(reason):
            return StoredRead(False, current, top, reason=reason)

        if current != epoch:
            return fail(EPOCH)
        if offset < 0 or missed < 0:
            return fail(AHEAD)
        if missed == 0:
            return StoredRead(True, current, top)
        if missed > limit:
            return fail(TOO_MANY)
        if length == 0:
            return fail(EXPIRED)            # the history list expired (no publish for `seconds`)
        if missed > length:
            return fail(TRIMMED)
        if len(entries) != missed:          # cannot happen (one atomic read); never replay a part
            return fail(TRIMMED)
        oldest = _envelope_ts(entries[0])
        if oldest is None or now - oldest > self.seconds:
            return fail(EXPIRED)            # a busy stream keeps `size` events, but not forever
        return StoredRead(True, current, top, entries)
