"""Redis Cluster (`redis+cluster://[[user]:password@]host:port[,host:port...]`), Redis >= 7.0.

Commands go through redis-py's `RedisCluster`: it learns the slot map from the nodes named
in the URL (any of them is enough), routes each command by its key's slot, follows MOVED
by itself (nothing ran: safe to send again) and, after a connection error, reads the slot
map again before the next command, so after a failover commands reach the promoted
replica by themselves. It is built on first use (its constructor connects: a worker must
start while the cluster is away, and say 503 until it answers), and its own errors (no
node reachable, a slot nobody serves) reach callers as redis ConnectionErrors, like every
other topology's.

Pub/sub is sharded (SPUBLISH/SSUBSCRIBE): a stream's channel is `<prefix>{<stream>}`, in
the slot of the stream's keys (`<prefix>{<stream>}:m`, `:h`), so the publish script
publishes where it writes and a message travels only to the shard that owns it. The
listener holds one connection per master, named by the slot map read right before it
connects (`subscribers`), and asks `shard_of(channel)` where each channel goes. A master
whose connection is lost, or that cannot be reached, does not hold the others up: its
topics wait, the listener asks again (`rejoin`) until the slot map names a master for
them that answers, and only that master's connection is built again.
"""
from __future__ import annotations

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.connection import Encoder
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from ..wire import stream_topic
from .link import (CLIENT_TIMEOUT, CLUSTER_SCHEME, PUBLISH_POOL, Link, client_options,
                   split_hosts_url, subscriber_options)

SLOTS = 16384


def parse_cluster_url(url: str) -> dict:
    """{nodes: [(host, port)], username, password}; ValueError if malformed."""
    parts = split_hosts_url(url, CLUSTER_SCHEME, "node")
    if parts["path"].strip("/") not in ("", "0"):
        raise ValueError(f"{CLUSTER_SCHEME}: a cluster has only database 0")
    return dict(nodes=parts["hosts"], username=parts["username"], password=parts["password"])


def _converted(call):
    """`call` with redis-py's cluster errors (not RedisErrors: no node reachable, a slot
    nobody serves) raised as redis ConnectionErrors, which every caller handles."""
    def run(*args, **kwargs):
        try:
            return call(*args, **kwargs)
        except RedisClusterException as exc:
            raise redis.ConnectionError(f"cluster: {exc}") from None
    return run


class _Cluster(RedisCluster):
    topology = "cluster"

    def execute_command(self, *args, **kwargs):
        return _converted(super().execute_command)(*args, **kwargs)

    def pipeline(self, *args, **kwargs):
        pipe = super().pipeline(*args, **kwargs)
        pipe.execute = _converted(pipe.execute)
        return pipe

    def command(self, **kwargs):
        """COMMAND, which redis-py's constructor asks of its default node (the first master
        of its slot map) to learn every command's keys: a dead master there failed the
        constructor, and so every command of a worker started while that shard was down,
        whatever its slot (redis-py keeps that default node after reading the slot map
        again). COMMAND only reads: the first master that answers, which becomes the
        default node of the commands without a slot."""
        node, reply = self._first_master(lambda node: super(_Cluster, self).command(target_nodes=node, **kwargs))
        if node is not self.get_default_node():
            self.set_default_node(node)
        return reply

    def publish(self, channel, message, **kwargs):
        """Classic PUBLISH (the control channel): it has no slot, and any master forwards
        it to every node over the cluster bus. redis-py sends a command without a slot to
        its default node, picked once, and does not pick another when that one dies (it
        only does when it may retry, and a publish must not be sent twice): so the first
        master that answers."""
        return self._first_master(lambda node: self.get_redis_connection(node).publish(channel, message))[1]

    def _first_master(self, call) -> tuple:
        """(node, call(node)) for the first master of the slot map that answers; the
        last connection error when none does."""
        failed = None
        for node in self.get_primaries():
            try:
                return node, call(node)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                failed = exc
        raise failed or redis.ConnectionError("cluster: no master reachable")

    def script_load(self, script):
        """On every master that answers. redis-py's loads it on every master of its slot
        map and fails if one is down, so while a master is dead (before a replica takes
        over) a script new to a live node (NOSCRIPT: a first catch-up, a promoted
        replica, whose script cache is empty) could not run anywhere."""
        sha = None
        for node in self.get_primaries():
            try:
                sha = self.get_redis_connection(node).script_load(script)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
        if sha is None:
            raise redis.ConnectionError("cluster: no master reachable to load a script")
        return sha


class ClusterClient:
    """The command client: a `RedisCluster` made at first use (see the module docstring)."""

    topology = "cluster"

    def __init__(self, **options):
        self._options = options
        self._real: _Cluster | None = None

    def real(self) -> _Cluster:
        if self._real is None:
            try:
                self._real = _Cluster(**self._options)
            except RedisClusterException as exc:
                raise redis.ConnectionError(f"cluster: {exc}") from None
        return self._real

    def __getattr__(self, name):
        return getattr(self.real(), name)

    def register_script(self, script) -> Script:
        """A Script run through this client: registering one (the modules that keep state
        in Redis do at a worker's start) must not need the cluster to answer."""
        return Script(self, script)

    def get_encoder(self) -> Encoder:
        """What a Script hashes its text with; the cluster client's own settings."""
        return Encoder(encoding="utf-8", encoding_errors="strict", decode_responses=False)

    def close(self):
        if self._real is not None:
            self._real.close()


def on_cluster(client) -> bool:
    """A Redis Cluster client (ours, or a RedisCluster a caller of publisher.py made)."""
    return isinstance(client, (ClusterClient, RedisCluster))


def real_cluster(client) -> RedisCluster:
    return client.real() if isinstance(client, ClusterClient) else client


def node_pipeline(client, key: str):
    """A plain pipeline to the master serving `key`'s slot now: a RedisCluster pipeline
    refuses EVALSHA, and the read scripts are pipelined per node instead (a slot that
    moved meanwhile answers MOVED: the reads fail, nothing half-done)."""
    real = real_cluster(client)
    node = real.get_node_from_key(key)
    return node.name, real.get_redis_connection(node).pipeline(transaction=False)


class ClusterLink(Link):
    topology = "cluster"
    sharded = True

    def __init__(self, url: str, timeout: float = CLIENT_TIMEOUT):
        super().__init__(url, timeout)
        cfg = parse_cluster_url(url)
        self.node_options = dict(username=cfg["username"], password=cfg["password"])
        self.client = ClusterClient(
            startup_nodes=[ClusterNode(host, port) for host, port in cfg["nodes"]],
            # a shard that is down must not stop the others (its slots answer 503)
            require_full_coverage=False, max_connections=PUBLISH_POOL,
            **self.node_options, **client_options(timeout))
        self._owners: list[str] = []          # slot -> "host:port" of its master, at connect

    def subscribers(self, timeout: float, name: str) -> dict:
        """{master "host:port": connected Connection, or None while it cannot be reached},
        on the slot map read now; ConnectionError when no master can be."""
        owners = self._read_owners()
        conns = self._connect(sorted(set(owners) - {""}), timeout, name)
        if not any(conns.values()):
            raise redis.ConnectionError("cluster: no master reachable")
        self._owners = owners
        return conns

    def rejoin(self, connected, timeout: float, name: str) -> tuple[dict, set]:
        """The masters the listener has no connection to, on the slot map read now (as
        `subscribers`), and the connected ones a slot moved away from (a migration, a
        demotion): their connections hear channels they no longer serve, and are built
        again. A slot that moved to a connected master is simply subscribed there."""
        owners = self._read_owners()
        moved = {old for old, new in zip(self._owners, owners) if old != new and old in connected}
        conns = self._connect(sorted(set(owners) - {""} - set(connected)), timeout, name)
        self._owners = owners
        return conns, moved

    def _read_owners(self) -> list[str]:
        real = self.client.real()
        try:
            real.nodes_manager.initialize()
        except RedisClusterException as exc:
            raise redis.ConnectionError(f"cluster: {exc}") from None
        owners = [""] * SLOTS
        for slot, nodes in real.nodes_manager.slots_cache.items():
            if nodes:
                owners[slot] = nodes[0].name
        return owners

    def _connect(self, masters, timeout: float, name: str) -> dict:
        conns: dict = {}
        for master in masters:
            host, _, port = master.rpartition(":")
            conn = redis.Connection(host=host, port=int(port), **self.node_options,
                                    **subscriber_options(timeout, name))
            try:
                conn.connect()
            except (redis.RedisError, OSError):
                conn = None             # down (until a replica takes its slots over)
            conns[master] = conn
        return conns

    def shard_of(self, channel: bytes) -> str:
        return self._owners[key_slot(channel)]

    def channel(self, prefix: bytes, stream: str) -> bytes:
        return prefix + b"{" + stream.encode() + b"}"

    def topic_of(self, prefix: bytes, channel: bytes) -> str:
        return stream_topic(channel[len(prefix) + 1:-1].decode("utf-8", "replace"))

    def probe_channels(self, private: bytes, shards) -> dict:
        """Per shard, a channel of this worker's own that the shard serves: `private` with
        a hash tag whose slot is that shard's (a few tries each: a shard owns ~1/3 of
        the slots)."""
        out = {}
        wanted = set(shards)
        for i in range(SLOTS * 8):
            channel = private + b"{" + str(i).encode() + b"}"
            owner = self._owners[key_slot(channel)]
            if owner in wanted and owner not in out:
                out[owner] = channel
                if len(out) == len(wanted):
                    break
        return out

    def publish_probe(self, channel: bytes, data: str):
        self.client.spublish(channel, data)
