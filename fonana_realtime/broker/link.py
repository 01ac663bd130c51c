"""How a worker reaches Redis, whatever the topology (PROTOCOL.md 10).

A `Link` gives the broker two things and knows nothing else of it:
- `client`: a redis-py client for commands (the publish script, history reads, resume
  marks, the /ready probe), on a bounded pool; after a failover it reaches the new master
  by itself.
- `subscribers()`: fresh, connected redis-py `Connection`s for the listener, by shard, to
  the nodes that carry pub/sub now: one for one Redis or Sentinel (the master the sentinels
  name at this moment), one per master for a Cluster (sharded pub/sub), with
  `shard_of(channel)` naming the one a stream's channel (`channel(prefix, stream)`) goes to,
  and `probe_channels` a channel of the worker's own on each (readiness.py's probe).

`open_link(url)` picks the topology from the URL's scheme: `redis://`/`rediss://`
(link_single.py), `redis+sentinel://` (link_sentinel.py), `redis+cluster://`
(link_cluster.py).
"""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from redis.backoff import NoBackoff
from redis.retry import Retry

from ..wire import stream_topic

CLIENT_TIMEOUT = 2.0        # command client: connect, read and write timeouts
PUBLISH_POOL = 32           # command connections per worker (callers wait <= CLIENT_TIMEOUT)

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
SCHEMES = (*SINGLE_SCHEMES, SENTINEL_SCHEME, CLUSTER_SCHEME)


def client_options(timeout: float = CLIENT_TIMEOUT) -> dict:
    """The command client's connection options, the same on every topology."""
    return dict(socket_timeout=timeout, socket_connect_timeout=timeout,
                # No blind retry: a publish the server ran before the link broke would
                # be delivered twice. A pooled link the server closed is replaced at
                # checkout by the pool itself.
                retry=Retry(NoBackoff(), 0), protocol=2)


def subscriber_options(timeout: float, name: str) -> dict:
    return dict(socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0), protocol=2, health_check_interval=0,
                client_name=name)


def split_hosts_url(url: str, scheme: str, what: str) -> dict:
    """A `scheme://[user[:password]@]host:port[,host:port...][/path]` URL (Sentinel's and
    Cluster's: several hosts, which urllib cannot split) as {hosts: [(host, port)],
    path, username, password}; ValueError naming `what` a host is if malformed."""
    given, sep, rest = url.partition("://")
    if given.lower() != scheme or not sep:
        raise ValueError(f"not a {scheme}:// URL")
    userinfo, at, rest = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = (user or None), (secret if colon else None)
    hosts, _, path = rest.partition("/")
    pairs = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"{scheme}: each {what} must be host:port")
        pairs.append((host.strip("[]"), int(port)))
    return dict(hosts=pairs, path=path, username=username, password=password)


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if scheme in (SENTINEL_SCHEME, CLUSTER_SCHEME) and sep:
        userinfo, at, hosts = rest.rpartition("@")
        if not at:
            return url
        user = userinfo.partition(":")[0]
        return f"{scheme}://{user}:***@{hosts}"
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"                  # IPv6
        if parts.username:
            netloc = f"{parts.username}:***@{netloc}"
        else:
            netloc = f":***@{netloc}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<unparseable REDIS_URL>"


class Link:
    """One topology's way to Redis (see the module docstring)."""

    topology = "base"
    sharded = False                         # SSUBSCRIBE/SPUBLISH instead of SUBSCRIBE/PUBLISH

    def __init__(self, url: str, timeout: float = CLIENT_TIMEOUT):
        self.url = url
        self.where = redacted(url)
        self.timeout = timeout              # the command client's
        self.client = None

    def subscriber(self, timeout: float, name: str):
        """A connected redis-py Connection for the listener (raises redis errors)."""
        raise NotImplementedError

    def subscribers(self, timeout: float, name: str) -> dict:
        """{shard: connected Connection, or None for a shard that cannot be reached now}
        for the listener; raises redis errors when none can."""
        return {"": self.subscriber(timeout, name)}

    def rejoin(self, connected, timeout: float, name: str) -> tuple[dict, set]:
        """After a shard's connection was lost: the shards not in `connected`, as
        `subscribers` answers them, and the connected ones that no longer serve all they
        did (their connections must be built again too). One shard only here: losing it
        is losing the link."""
        return {}, set()

    def shard_of(self, channel: bytes) -> str:
        return ""

    def channel(self, prefix: bytes, stream: str) -> bytes:
        """The pub/sub channel of `stream` (wire.py: `<prefix><topic>`)."""
        return prefix + stream_topic(stream).encode()

    def topic_of(self, prefix: bytes, channel: bytes) -> str:
        """The topic of a stream's channel (the inverse of `channel`)."""
        return channel[len(prefix):].decode("utf-8", "replace")

    def probe_channels(self, private: bytes, shards) -> dict:
        return {shard: private for shard in shards}

    def publish_probe(self, channel: bytes, data: str):
        self.client.publish(channel, data)

    def close(self):
        if self.client is not None:
            self.client.close()


def check_url(url: str) -> None:
    """ValueError naming what is wrong with a REDIS_URL (connects to nothing)."""
    scheme = url.partition("://")[0].lower()
    if scheme == SENTINEL_SCHEME:
        from .link_sentinel import parse_sentinel_url
        parse_sentinel_url(url)
    elif scheme == CLUSTER_SCHEME:
        from .link_cluster import parse_cluster_url
        parse_cluster_url(url)
    elif scheme not in SINGLE_SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r} (expected one of {', '.join(SCHEMES)})")


def open_link(url: str, timeout: float = CLIENT_TIMEOUT) -> Link:
    """The Link for REDIS_URL's topology; `timeout` bounds each command (and the wait
    for a pooled connection)."""
    check_url(url)
    scheme = url.partition("://")[0].lower()
    if scheme == SENTINEL_SCHEME:
        from .link_sentinel import SentinelLink
        return SentinelLink(url, timeout)
    if scheme == CLUSTER_SCHEME:
        from .link_cluster import ClusterLink
        return ClusterLink(url, timeout)
    from .link_single import SingleLink
    return SingleLink(url, timeout)
