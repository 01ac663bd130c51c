"""Presence (PROTOCOL.md 9): who holds which channel key or `user_U`, and which workers
live, over every worker and host.

Without Redis (one worker) every answer is read from this worker's hub (`LocalPresence`).

With Redis (`RedisPresence`), each worker copies its own membership there:
- `<prefix>presence:<key>` (a hash per channel key and per `user_U`): field
  `<node>|<connection id>`, value the user id; for `user_U` the value is the connection's
  details as JSON (protocol, channels, connected-since, client address, host, pid), so
  `GET /api/connections` is one read.
- `<prefix>presence:nodes` (a sorted set): node -> the unix time of its last heartbeat
  (every HEARTBEAT seconds); `<prefix>presence:info:<node>`: the worker's `/api/info`
  entry (with its busiest channels), expiring after NODE_DEAD.

A node is the worker (`host:pid:random`). A reader takes only the fields of nodes whose
heartbeat is younger than NODE_DEAD, and deletes the fields of nodes older than that it
finds (a SIGKILLed worker says no goodbye): so a dead host's entries stop counting within
NODE_DEAD (15 s) and go from a hash when it is next read. Each hash expires KEY_SECONDS
after its last write or renewal; a live worker renews the hashes it holds every
KEY_SECONDS / 3 (one pipelined EXPIRE each), so a hash nobody alive holds is gone within
KEY_SECONDS even if never read.

Cost on the connect path: membership changes are noted in a dict (`arrived`, `left`,
`joined`, `parted`) and written by one greenlet per worker GATHER_SECONDS after the first
of them, one script call for everything changed meanwhile (`WRITE_LUA`), so a connect
storm is a few calls a second, not a round trip per connect. docs/BENCHMARKS.md has its measured cost.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid

import redis

from . import metrics
from .broker.link_cluster import on_cluster, real_cluster

log = logging.getLogger("fonana_realtime.presence")

HEARTBEAT = 3.0         # seconds between a worker's heartbeats
NODE_DEAD = 15.0        # a node without a heartbeat for this long is gone
KEY_SECONDS = 60        # a presence hash nobody renews expires after this
RETRY_SECONDS = 1.0     # after a failed write, the next attempt waits this long
# The writer gathers this long after the first change before writing: in a connect storm a
# loop turn holds one or two connects, and a script call per turn was a round trip per
# connect (presence on/off: 1.14x a connect's server CPU); gathered, one call carries every
# connect of 0.1 s (1.04x, docs/BENCHMARKS.md). Presence stays within its "few seconds".
GATHER_SECONDS = 0.1
TOP_CHANNELS = 200      # busiest channels each worker reports in its heartbeat
READ_BATCH = 500        # keys per pipelined read
WRITE_BATCH = 1000      # membership changes per script call (Redis runs a call at once: ~1 ms)

# ARGV: key prefix, TTL, then (op, key, field, value) per change: "s" HSET and EXPIRE, "d" HDEL.
# Keys named in ARGV: on Redis Cluster one call per master, naming one of its keys as
# KEYS[1] so the call is routed there (Redis 7.0 lets a script touch other slots of the
# node it runs on; a slot that moved meanwhile fails the call, which is written again).
WRITE_LUA = """
local prefix, ttl = ARGV[1], ARGV[2]
for i = 3, #ARGV, 4 do
  local key = prefix .. ARGV[i + 1]
  if ARGV[i] == 's' then
    redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3])
    redis.call('EXPIRE', key, ttl)
  else
    redis.call('HDEL', key, ARGV[i + 2])
  end
end
return 1
"""


def user_key(user_id: str) -> str:
    return "user_" + user_id


def _top(counts: dict, limit: int) -> list:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


class Presence:
    """What both kinds share: this worker's own entry and its membership counts."""

    enabled = True

    def __init__(self, hub, broker, started: float | None = None):
        self.hub = hub
        self.broker = broker
        self.started = started if started is not None else time.time()
        self.host = socket.gethostname()

    # membership notes (the Redis kind writes them; the local one reads the hub)
    def arrived(self, conn): pass
    def left(self, conn, channels): pass
    def joined(self, conn, key: str): pass
    def parted(self, conn, key: str): pass
    def start(self): pass

    def details(self, conn) -> dict:
        return {"host": self.host, "worker": os.getpid(), "connectionId": conn.id,
                "protocol": conn.protocol or "legacy", "channels": sorted(conn.channels),
                "connectedSince": conn.connected_at, "clientAddress": conn.ip}

    def local_counts(self) -> dict:
        """channel key -> this worker's connections holding it (user topics left out)."""
        counts = {}
        for topic, members in self.hub.by_topic.items():
            kind, _, key = topic.partition(":")
            if kind == "channel":
                counts[key] = len(members)
        return counts

    def own_info(self) -> dict:
        conns = self.hub.connections
        return {"host": self.host, "pid": os.getpid(), "started": self.started,
                "connections": len(conns), "subscriptions": sum(len(c.channels) for c in conns),
                "deliveries": metrics.own_total(metrics.EVENTS_DELIVERED),
                "published": metrics.own_total(metrics.EVENTS_PUBLISHED),
                "slowConsumerCloses": metrics.own_total(metrics.SLOW_CLIENT_CLOSES),
                "recoveries": metrics.own_total(metrics.RECOVERIES) + metrics.own_total(metrics.LEGACY_RESUMES),
                "broker": self.broker.name, "brokerLink": self.broker.link_state()}


class DisabledPresence(Presence):
    """WS_PRESENCE=0: nothing noted, nothing answered (the API says 503 presence_disabled)."""

    enabled = False


class LocalPresence(Presence):
    """One worker, no Redis: the hub is the whole truth."""

    def channel(self, key: str) -> dict:
        members = self._members(key)
        return {"channel": key, "connections": len(members),
                "users": sorted({c.user_id for c in members})}

    def _members(self, key: str):
        if key.startswith("user_"):
            return self.hub.of_user(key[5:])
        return self.hub.targets(("channel:" + key,))

    def counts(self, keys) -> dict:
        return {key: len(self._members(key)) for key in keys}

    def connections(self, user_id: str) -> list:
        return [self.details(c) for c in self.hub.of_user(user_id)]

    def channels(self, limit: int) -> list:
        return [{"channel": k, "connections": n} for k, n in _top(self.local_counts(), limit)]

    def info(self) -> list:
        return [self.own_info()]


class RedisPresence(Presence):
    def __init__(self, hub, broker, client, prefix: str, started: float | None = None):
        super().__init__(hub, broker, started)
        self.client = client
        self.prefix = prefix + "presence:"
        self.node = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._nodes_key = self.prefix + "nodes"
        self._info_key = self.prefix + "info:" + self.node
        self._writes: dict = {}     # (key, conn) -> True (present) or None (gone)
        self._dirty: set = set()    # connections whose user-hash details changed
        self._wake = None
        self._script = client.register_script(WRITE_LUA)

    def _field(self, conn) -> str:
        return f"{self.node}|{conn.id}"

    # ---- membership notes: cheap, on the connect and subscribe paths ------------------

    def _note(self, key, conn, present):
        self._writes[(key, conn)] = present
        if self._wake is not None:
            self._wake.set()

    def arrived(self, conn):
        self._dirty.add(conn)
        self._note(user_key(conn.user_id), conn, True)

    def left(self, conn, channels):
        self._dirty.discard(conn)
        for key in channels:
            self._writes[(key, conn)] = None
        self._note(user_key(conn.user_id), conn, None)

    def joined(self, conn, key):
        self._dirty.add(conn)
        self._note(key, conn, True)

    def parted(self, conn, key):
        self._dirty.add(conn)
        self._note(key, conn, None)

    # ---- the writer and the heartbeat (greenlets) ------------------------------------

    def start(self):
        import gevent
        from gevent.event import Event
        self._wake = Event()
        gevent.spawn(self._write_loop)
        gevent.spawn(self._heartbeat_loop)

    def _write_loop(self):
        import gevent
        while True:
            self._wake.wait()
            gevent.sleep(GATHER_SECONDS)
            self._wake.clear()
            writes, self._writes = self._writes, {}
            dirty, self._dirty = self._dirty, set()
            if not writes and not dirty:
                continue
            try:
                self.write(writes, dirty)
            except redis.RedisError as exc:   # Redis away: keep them, newer notes win
                log.warning("presence not written", extra={"event": "presence_unavailable",
                                                           "error": type(exc).__name__})
                writes.update(self._writes)
                self._writes = writes
                self._dirty |= dirty
                gevent.sleep(RETRY_SECONDS)
                self._wake.set()

    def write(self, writes: dict, dirty: set):
        """One script call per WRITE_BATCH changes: HSET + EXPIRE or HDEL each. Through
        redis-py's pipeline the same changes cost 32 µs of the worker's CPU per connect and
        13 µs per departure (command packing, reply parsing: four commands a connect); as
        flat arguments of one script call 13 µs and 8 µs (measured: batches of 200, warm
        connection, this VM)."""
        args: list = []
        for (key, conn), present in writes.items():
            if present is None:
                args += ("d", key, self._field(conn), "")
            elif not key.startswith("user_") or conn not in dirty:
                args += ("s", key, self._field(conn), conn.user_id)
        for conn in dirty:
            if conn in self.hub.connections:
                args += ("s", user_key(conn.user_id), self._field(conn), json.dumps(self.details(conn)))
        step = WRITE_BATCH * 4
        for route, part in self._per_node(args):
            for start in range(0, len(part), step):
                self._script(keys=route, args=[self.prefix, KEY_SECONDS, *part[start:start + step]])

    def _per_node(self, args: list):
        """([a key to route by], changes) per master on Redis Cluster; ([], all) elsewhere."""
        if not on_cluster(self.client):
            return [([], args)]
        real = real_cluster(self.client)
        nodes: dict = {}
        for i in range(0, len(args), 4):
            key = self.prefix + args[i + 1]
            entry = nodes.setdefault(real.get_node_from_key(key).name, ([key], []))
            entry[1].extend(args[i:i + 4])
        return list(nodes.values())

    def _heartbeat_loop(self):
        import gevent
        renewed = 0.0
        while True:
            try:
                self.heartbeat()
                now = time.monotonic()
                if now - renewed > KEY_SECONDS / 3:
                    self.renew()
                    renewed = now
            except redis.RedisError as exc:
                log.warning("presence heartbeat failed", extra={"event": "presence_unavailable",
                                                                "error": type(exc).__name__})
            except Exception:
                log.exception("presence heartbeat failed", extra={"event": "presence_error"})
            gevent.sleep(HEARTBEAT)

    def heartbeat(self):
        now = time.time()
        info = dict(self.own_info(), node=self.node, top=_top(self.local_counts(), TOP_CHANNELS))
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self._nodes_key, {self.node: now})
        pipe.expire(self._nodes_key, KEY_SECONDS)   # gone with the last worker, like the hashes
        pipe.set(self._info_key, json.dumps(info), ex=int(NODE_DEAD) + 1)
        # nodes silent for a long while are no one's business any more
        pipe.zremrangebyscore(self._nodes_key, "-inf", now - KEY_SECONDS * 10)
        pipe.execute()

    def renew(self):
        keys = [topic.partition(":")[2] if topic.startswith("channel:") else user_key(topic[5:])
                for topic in list(self.hub.by_topic)]
        for start in range(0, len(keys), READ_BATCH):
            pipe = self.client.pipeline(transaction=False)
            for key in keys[start:start + READ_BATCH]:
                pipe.expire(self.prefix + key, KEY_SECONDS)
            pipe.execute()

    # ---- reads (the API; any worker answers for all) ---------------------------------

    def live_nodes(self) -> set:
        now = time.time()
        return {n.decode() for n in self.client.zrangebyscore(self._nodes_key, now - NODE_DEAD, "+inf")}

    def _live_fields(self, key: str, raw: dict, live: set) -> dict:
        """The fields of live nodes; those of dead ones are deleted on the way."""
        out, dead = {}, []
        for field, value in raw.items():
            name = field.decode("utf-8", "replace")
            if name.partition("|")[0] in live:
                out[name] = value
            else:
                dead.append(field)
        if dead:
            try:
                self.client.hdel(self.prefix + key, *dead)
            except redis.RedisError:
                pass
        return out

    def channel(self, key: str) -> dict:
        live = self.live_nodes()
        fields = self._live_fields(key, self.client.hgetall(self.prefix + key), live)
        if key.startswith("user_"):
            users = [key[5:]] if fields else []
        else:
            users = sorted({v.decode("utf-8", "replace") for v in fields.values()})
        return {"channel": key, "connections": len(fields), "users": users}

    def counts(self, keys) -> dict:
        live = self.live_nodes()
        out = {}
        for start in range(0, len(keys), READ_BATCH):
            chunk = keys[start:start + READ_BATCH]
            pipe = self.client.pipeline(transaction=False)
            for key in chunk:
                pipe.hkeys(self.prefix + key)
            for key, fields in zip(chunk, pipe.execute()):
                out[key] = sum(1 for f in fields if f.decode("utf-8", "replace").partition("|")[0] in live)
        return out

    def connections(self, user_id: str) -> list:
        key = user_key(user_id)
        fields = self._live_fields(key, self.client.hgetall(self.prefix + key), self.live_nodes())
        out = []
        for value in fields.values():
            try:
                entry = json.loads(value)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return sorted(out, key=lambda e: (e.get("connectedSince") or 0, str(e.get("host")), e.get("worker") or 0))

    def _infos(self) -> list:
        live = sorted(self.live_nodes())
        if not live:
            return []
        out = []
        keys = [self.prefix + "info:" + n for n in live]
        # one key per slot on Redis Cluster: MGET there must not span slots
        read = self.client.mget_nonatomic if on_cluster(self.client) else self.client.mget
        for raw in read(keys):
            if raw is None:
                continue
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
        return out

    def channels(self, limit: int) -> list:
        counts: dict = {}
        for info in self._infos():
            for key, n in info.get("top", ()):
                counts[key] = counts.get(key, 0) + n
        return [{"channel": k, "connections": n} for k, n in _top(counts, limit)]

    def info(self) -> list:
        out = []
        for info in self._infos():
            info.pop("top", None)
            out.append(info)
        return sorted(out, key=lambda i: (i.get("host", ""), i.get("pid", 0)))


def open_presence(settings, hub, broker) -> Presence:
    if not settings.presence:
        return DisabledPresence(hub, broker)
    client = broker.client
    if settings.redis_url and client is not None:
        return RedisPresence(hub, broker, client, settings.redis_prefix)
    return LocalPresence(hub, broker)
