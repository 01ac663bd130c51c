"""Redis Sentinel (`redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER[/db]`).

The sentinels are asked which node is MASTER's master (redis-py's `Sentinel`). Commands go
through redis-py's Sentinel-managed pool: each new connection asks the sentinels first, a
pooled connection to a master that was demoted answers READONLY and is dropped, and idle
ones are closed once the sentinels name another master; so after a failover publishes
reach the new master by themselves (and answer 503 until the sentinels have promoted
one). The listener asks the sentinels before each of its connections. The password (and
user) is the Redis nodes'; the sentinels are asked without one.
"""
from __future__ import annotations

import redis
from redis.connection import BlockingConnectionPool, Connection
from redis.sentinel import Sentinel, SentinelConnectionPool

from .link import (CLIENT_TIMEOUT, PUBLISH_POOL, SENTINEL_SCHEME, Link, client_options,
                   split_hosts_url, subscriber_options)


def parse_sentinel_url(url: str) -> dict:
    """{sentinels: [(host, port)], service, db, username, password}; ValueError if malformed."""
    parts = split_hosts_url(url, SENTINEL_SCHEME, "sentinel")
    service, _, db = parts["path"].strip("/").partition("/")
    if not service:
        raise ValueError(f"{SENTINEL_SCHEME}: the master's name is missing (…/MASTER)")
    if db and not db.isdigit():
        raise ValueError(f"{SENTINEL_SCHEME}: the database must be a number")
    return dict(sentinels=parts["hosts"], service=service, db=int(db or 0),
                username=parts["username"], password=parts["password"])


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool, bounded like the single-Redis one (callers wait at most
    the pool timeout for a connection instead of opening without limit)."""


class SentinelLink(Link):
    topology = "sentinel"

    def __init__(self, url: str, timeout: float = CLIENT_TIMEOUT):
        super().__init__(url, timeout)
        cfg = parse_sentinel_url(url)
        self.service = cfg["service"]
        self.node_options = dict(db=cfg["db"], username=cfg["username"], password=cfg["password"])
        self.sentinel = Sentinel(cfg["sentinels"], min_other_sentinels=0,
                                 sentinel_kwargs=dict(socket_timeout=timeout,
                                                      socket_connect_timeout=timeout,
                                                      protocol=2))
        pool = BlockingSentinelPool(self.service, self.sentinel, is_master=True,
                                    max_connections=PUBLISH_POOL, timeout=timeout,
                                    **self.node_options, **client_options(timeout))
        self.client = redis.Redis(connection_pool=pool)

    def master(self) -> tuple[str, int]:
        """The address the sentinels give for the master now (MasterNotFoundError, a
        redis ConnectionError, when none answers or none knows a healthy one)."""
        return self.sentinel.discover_master(self.service)

    def subscriber(self, timeout: float, name: str):
        host, port = self.master()
        conn = Connection(host=host, port=port, **self.node_options,
                          **subscriber_options(timeout, name))
        conn.connect()
        return conn

    def close(self):
        super().close()
        for s in self.sentinel.sentinels:
            s.close()
