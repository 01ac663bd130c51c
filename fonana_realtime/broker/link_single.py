"""One Redis (`redis://`, `rediss://`): a bounded pool for commands, the listener's
connection to the same server."""
from __future__ import annotations

import redis
from redis.connection import BlockingConnectionPool, Connection, parse_url

from .link import CLIENT_TIMEOUT, PUBLISH_POOL, Link, client_options, subscriber_options


class SingleLink(Link):
    topology = "single"

    def __init__(self, url: str, timeout: float = CLIENT_TIMEOUT):
        super().__init__(url, timeout)
        pool = BlockingConnectionPool.from_url(url, max_connections=PUBLISH_POOL,
                                               timeout=timeout, **client_options(timeout))
        self.client = redis.Redis(connection_pool=pool)

    def subscriber(self, timeout: float, name: str):
        options = parse_url(self.url)
        cls = options.pop("connection_class", Connection)
        options.update(subscriber_options(timeout, name))
        conn = cls(**options)
        conn.connect()
        return conn
