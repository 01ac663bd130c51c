"""A private Redis Sentinel set on free loopback ports: a master, its replica and three
sentinels (`redis-server <conf> --sentinel`), for failover tests and benchmarks. Nothing
is saved to disk; `stop()` kills everything it started.

The sentinels judge a master down after DOWN_AFTER_MS without a reply (a quorum of 2
agrees), then promote the replica. `url` is the REDIS_URL the server takes
(`redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/<name>`).
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from .redis_server import RedisServer, client
from .server import free_port

MASTER_NAME = "fonana"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


class Sentinel:
    def __init__(self, workdir: Path, master_port: int):
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / f"sentinel-{self.port}.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n")
        self.log = open(workdir / f"sentinel-{self.port}.log", "ab")
        self.proc = subprocess.Popen([shutil.which("redis-server"), str(self.conf), "--sentinel"],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def client(self) -> redis.Redis:
        return client(f"redis://127.0.0.1:{self.port}/0", socket_timeout=1, socket_connect_timeout=1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()


class SentinelSet:
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.nodes = [RedisServer(self.workdir / "a"), RedisServer(self.workdir / "b")]
        self.sentinels: list[Sentinel] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}"

    def start(self, timeout: float = 30.0) -> "SentinelSet":
        master, replica = self.nodes
        master.start()
        replica.start()
        # Redis 7 waits 5 s for more replicas before a diskless full sync: not here.
        master.client().config_set("repl-diskless-sync-delay", "0")
        replica.client().replicaof("127.0.0.1", master.port)
        self._poll(lambda: replica.client().info("replication")["master_link_status"] == "up",
                   timeout, "the replica's first sync")
        sdir = self.workdir / "sentinels"
        sdir.mkdir(parents=True, exist_ok=True)
        self.sentinels = [Sentinel(sdir, master.port) for _ in range(3)]
        # every sentinel sees the replica and the two other sentinels (hello messages)
        self._poll(lambda: all(self._knows_all(s) for s in self.sentinels), timeout,
                   "sentinels discovering the replica and each other")
        return self

    @staticmethod
    def _knows_all(sentinel: Sentinel) -> bool:
        r = sentinel.client()
        try:
            state = r.sentinel_master(MASTER_NAME)
            return state["num-slaves"] == 1 and state["num-other-sentinels"] == 2 and \
                state["flags"] == "master"
        finally:
            r.close()

    def master(self) -> RedisServer:
        """The node the sentinels name as master now."""
        r = self.sentinels[0].client()
        try:
            _, port = r.sentinel_get_master_addr_by_name(MASTER_NAME)
        finally:
            r.close()
        return next(n for n in self.nodes if n.port == int(port))

    def replica_of(self, master: RedisServer) -> RedisServer:
        return next(n for n in self.nodes if n is not master)

    def wait_promoted(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Every sentinel names another master than `old`, and that node says so itself."""
        def promoted():
            ports = set()
            for s in self.sentinels:
                r = s.client()
                try:
                    ports.add(int(r.sentinel_get_master_addr_by_name(MASTER_NAME)[1]))
                except redis.RedisError:
                    return False
                finally:
                    r.close()
            if len(ports) != 1 or old.port in ports:
                return False
            new = next(n for n in self.nodes if n.port in ports)
            return new if new.client().info("replication")["role"] == "master" else False
        return self._poll(promoted, timeout, "the sentinels promoting the replica")

    @staticmethod
    def _poll(predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = predicate()
            except (redis.RedisError, OSError):
                value = None
            if value:
                return value
            assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
            time.sleep(0.05)        # polling processes that expose state only by polling

    def stop(self):
        for s in self.sentinels:
            s.stop()
        for n in self.nodes:
            n.stop()
