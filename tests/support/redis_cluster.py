"""A private Redis Cluster on free loopback ports: three masters and one replica each
(`redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`), for cluster tests and
benchmarks. Nothing is saved to disk; `stop()` kills every node it started.

A master that stops answering is judged failed after NODE_TIMEOUT_MS, then its replica is
promoted (a few hundred ms more). `url` is the REDIS_URL the server takes
(`redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…`).

`RedisCluster(workdir, proxied=True)`: every node behind a StallProxy of its own
(tests/support/stall_proxy.py), which is the address it announces (`--cluster-announce-port`;
its cluster bus port stays its real one, `--cluster-announce-bus-port`). So CLUSTER
SLOTS/SHARDS, MOVED and a replica's link to its master all name the proxy: every client
connection (the servers' commands and listeners, replication) passes it, and a test can
`node.proxy.stall()` one node's listener links. Only the nodes' bus (gossip, failure
detection) and this module's own admin clients (`node.client()`) go straight to them.
"""
from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.crc import key_slot

from fonana_realtime.redis_history import meta_key

from .redis_server import client
from .server import LOW_PORT, ephemeral_range
from .stall_proxy import StallProxy

NODE_TIMEOUT_MS = 1000
MASTERS = 3
BUS_OFFSET = 10000          # a node's cluster bus listens on its port + this


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; Redis takes none over 55535.
    Both below the kernel's ephemeral range when it leaves room (tests/support/server.py
    free_port says why: an outgoing connection can take an ephemeral port at any moment,
    and the nodes' bus links to each other are such connections)."""
    low, _ = ephemeral_range()
    first, last = LOW_PORT, low - BUS_OFFSET - 1
    if last - first < 1000:                     # no room below the range: anywhere, as before
        first, last = 20000, 45000
    for _ in range(200):
        port = random.randint(first, last)
        try:
            for p in (port, port + BUS_OFFSET):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair for a cluster node")


class ClusterNode:
    def __init__(self, workdir: Path, *, proxied: bool = False):
        self.port = free_cluster_port()             # where it really listens
        self.proxy: StallProxy | None = None
        announce: list[str] = []
        if proxied:
            for _ in range(10):     # the proxy's free port may be our own, not bound yet
                self.proxy = StallProxy("127.0.0.1", self.port)
                if self.proxy.port not in (self.port, self.port + BUS_OFFSET):
                    break
                self.proxy.down()
            else:
                raise AssertionError(f"no proxy port apart from node {self.port}'s")
            announce = ["--cluster-announce-ip", "127.0.0.1",
                        "--cluster-announce-port", str(self.proxy.port),
                        "--cluster-announce-bus-port", str(self.port + BUS_OFFSET)]
        self.workdir = workdir / str(self.port)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.workdir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             # a replica with stale data still takes over (tests kill masters under load)
             "--cluster-replica-validity-factor", "0",
             # the other shards go on serving while one has no master (docs/DEPLOY.md)
             "--cluster-require-full-coverage", "no",
             "--repl-diskless-sync-delay", "0", *announce],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

    @property
    def announced_port(self) -> int:
        """The port the cluster names this node by (its proxy's, when it has one)."""
        return self.proxy.port if self.proxy is not None else self.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.announced_port}"

    def client(self) -> redis.Redis:
        """Straight to the node (never stalled): the test's own look at it."""
        return client(f"redis://127.0.0.1:{self.port}/0", socket_timeout=1, socket_connect_timeout=1)

    def listeners(self) -> set[int]:
        """The ids of the servers' listener connections to this node (CLIENT SETNAME
        `fonana-rt-sub-<pid>`, broker/redis.py): the same ids later mean the same
        connections, never rebuilt meanwhile."""
        r = self.client()
        try:
            return {c["id"] for c in r.client_list() if c.get("name", "").startswith("fonana-rt-sub-")}
        finally:
            r.close()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self):
        """SIGKILL: a crash, without a word to anyone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        self.kill()
        self.log.close()
        if self.proxy is not None:
            self.proxy.down()


class RedisCluster:
    def __init__(self, workdir: Path, *, proxied: bool = False):
        self.workdir = Path(workdir)
        self.proxied = proxied
        self.nodes: list[ClusterNode] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(n.address for n in self.nodes[:MASTERS])

    def start(self, timeout: float = 60.0) -> "RedisCluster":
        try:
            # one by one: a node's ports are bound before the next one (and its proxy)
            # picks free ones
            for _ in range(2 * MASTERS):
                node = ClusterNode(self.workdir, proxied=self.proxied)
                self.nodes.append(node)
                _poll(lambda node=node: self._answers(node), timeout, f"cluster node {node.port} starting")
        except (SystemExit, AssertionError) as exc:
            self.stop()
            raise AssertionError(str(exc)) from None
        created = subprocess.run(
            [shutil.which("redis-cli"), "--cluster", "create", *(n.address for n in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        assert created.returncode == 0, created.stdout.decode()[-2000:] + created.stderr.decode()[-2000:]
        _poll(self.healthy, timeout, "the cluster converging (every slot served, every replica synced)")
        return self

    @staticmethod
    def _answers(node: ClusterNode) -> bool:
        if not node.running:
            raise SystemExit(f"cluster node {node.port} exited: see {node.workdir}/redis.log")
        r = node.client()
        try:
            return r.ping()
        finally:
            r.close()

    def shards(self) -> list[dict]:
        """CLUSTER SHARDS as a live node sees it: [{"slots": [(a, b)], "master": ClusterNode,
        "replicas": [ClusterNode]}], only nodes that are up."""
        for node in self.nodes:
            if not node.running:
                continue
            r = node.client()
            try:
                raw = r.execute_command("CLUSTER", "SHARDS")
            except redis.RedisError:
                continue
            finally:
                r.close()
            by_port = {n.announced_port: n for n in self.nodes}
            out = []
            for shard in raw:
                shard = _pairs(shard)
                slots = shard[b"slots"]
                master, replicas = None, []
                for info in shard[b"nodes"]:
                    info = _pairs(info)
                    node_ = by_port.get(int(info[b"port"]))
                    if node_ is None or info[b"health"] != b"online":
                        continue
                    if info[b"role"] == b"master":
                        master = node_
                    else:
                        replicas.append(node_)
                out.append({"slots": [(slots[i], slots[i + 1]) for i in range(0, len(slots), 2)],
                            "master": master, "replicas": replicas})
            return out
        return []

    def healthy(self) -> bool:
        """Every live node says the cluster is ok, three shards each have a master that
        serves slots and a replica whose link to it is up."""
        for node in self.nodes:
            if not node.running:
                continue
            r = node.client()
            try:
                if r.execute_command("CLUSTER", "INFO").find(b"cluster_state:ok") < 0:
                    return False
            finally:
                r.close()
        shards = [s for s in self.shards() if s["slots"]]
        if len(shards) != MASTERS or any(s["master"] is None or not s["replicas"] for s in shards):
            return False
        for shard in shards:
            for replica in shard["replicas"]:
                r = replica.client()
                try:
                    if r.info("replication").get("master_link_status") != "up":
                        return False
                finally:
                    r.close()
        return True

    def master_of(self, slot: int) -> ClusterNode:
        for shard in self.shards():
            if any(a <= slot <= b for a, b in shard["slots"]):
                return shard["master"]
        raise AssertionError(f"no master serves slot {slot}")

    def migrate_slot(self, slot: int, to: ClusterNode) -> None:
        """Move `slot` and its keys to the master `to` (as `redis-cli --cluster reshard`
        does: IMPORTING/MIGRATING, MIGRATE each key, then SETSLOT NODE on every master)."""
        source = self.master_of(slot)
        src, dst = source.client(), to.client()
        try:
            src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *keys)
            for shard in self.shards():
                if shard["master"] is not None:
                    r = shard["master"].client()
                    try:
                        r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
                    finally:
                        r.close()
        finally:
            src.close()
            dst.close()
        _poll(lambda: self.master_of(slot) is to and all(_cluster_ok(n) for n in self.nodes if n.running),
              30, f"slot {slot} served by {to.port}")

    def wait_promoted(self, old: ClusterNode, slot: int, timeout: float = 30.0) -> ClusterNode:
        """Another node is master of `slot`, says so itself, and every live node agrees
        the cluster is ok."""
        def promoted():
            master = self.master_of(slot)
            if master is None or master is old:
                return None
            r = master.client()
            try:
                if r.info("replication")["role"] != "master":
                    return None
            finally:
                r.close()
            ok = all(_cluster_ok(n) for n in self.nodes if n.running)
            return master if ok else None
        return _poll(promoted, timeout, "a replica taking over the killed master's slots")

    def stop(self):
        for node in self.nodes:
            node.stop()


def slot_of(prefix: str, stream: str) -> int:
    """The slot of `stream`'s keys and channel (its hash tag: broker/link_cluster.py)."""
    return key_slot(meta_key(prefix, stream).encode())


def posts_on_shards(seed, cluster: RedisCluster, prefix: str, creator, count: int) -> list[str]:
    """`count` posts of `creator` whose streams are served by `count` different masters."""
    found: dict = {}
    for _ in range(200):
        post = seed.post(creator)
        master = cluster.master_of(slot_of(prefix, f"post_{post}"))
        found.setdefault(master.port, post)
        if len(found) == count:
            return list(found.values())
    raise AssertionError("no posts on enough shards")


def _cluster_ok(node: ClusterNode) -> bool:
    r = node.client()
    try:
        return r.execute_command("CLUSTER", "INFO").find(b"cluster_state:ok") >= 0
    finally:
        r.close()


def _pairs(flat) -> dict:
    if isinstance(flat, dict):
        return flat
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _poll(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (redis.RedisError, OSError, AssertionError):
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)        # polling processes that expose state only by polling
