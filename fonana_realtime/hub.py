"""This worker's registry: who is connected, who holds which topic.

A pure registry: it never calls the broker and never writes to a socket. Its
membership calls report whether a topic just got its first local subscriber or lost
its last, so fanout.py (which joins hub and broker) knows when to listen/unlisten.
Topic names come from wire.py (`channel:post_P`, `user:U`).
"""
from __future__ import annotations

from .wire import channel_topic, user_topic


class Hub:
    def __init__(self):
        self.connections: set = set()
        self.by_topic: dict[str, set] = {}     # "channel:post_P" / "user:U" -> connections

    # ---- membership: each returns whether the topic's local audience began / ended -------

    def _join(self, topic: str, conn) -> bool:
        members = self.by_topic.get(topic)
        if members is None:
            self.by_topic[topic] = {conn}
            return True
        members.add(conn)
        return False

    def _leave(self, topic: str, conn) -> bool:
        members = self.by_topic.get(topic)
        if members is None:
            return False
        members.discard(conn)
        if members:
            return False
        del self.by_topic[topic]
        return True

    def add(self, conn) -> bool:
        """Register a connection under its user topic; True if that topic is new here."""
        self.connections.add(conn)
        return self._join(user_topic(conn.user_id), conn)

    def remove(self, conn) -> list[str]:
        """Unregister a connection and all it holds; the topics that lost their last."""
        if conn not in self.connections:
            return []
        self.connections.discard(conn)
        ended = [topic for topic in map(channel_topic, conn.channels) if self._leave(topic, conn)]
        conn.drop_channels()
        topic = user_topic(conn.user_id)
        if self._leave(topic, conn):
            ended.append(topic)
        return ended

    def subscribe(self, conn, key: str) -> bool:
        """Add channel `key` to the connection; True if its topic is new here."""
        if key in conn.channels:
            return False
        conn.hold_channel(key)
        return self._join(channel_topic(key), conn)

    def unsubscribe(self, conn, key: str) -> bool:
        """Drop channel `key`; True if its topic lost its last local subscriber."""
        if key not in conn.channels:
            return False
        conn.drop_channel(key)
        return self._leave(channel_topic(key), conn)

    def user_connection_count(self, user_id: str) -> int:
        return len(self.by_topic.get(user_topic(user_id), ()))

    def of_user(self, user_id: str) -> tuple:
        """This worker's connections of `user_id` (a copy: closing them changes the set)."""
        return tuple(self.by_topic.get(user_topic(user_id), ()))

    # ---- lookup --------------------------------------------------------------------

    def targets(self, topics, but_not=()) -> set | tuple:
        """The local connections of a route's topics, each once; none that holds one of
        `but_not` (they got the event already: wire.Message.before)."""
        if len(topics) == 1 and not but_not:
            return tuple(self.by_topic.get(topics[0], ()))   # a copy: sends may close connections
        found: set = set()
        for topic in topics:
            found.update(self.by_topic.get(topic, ()))
        for topic in but_not:
            found.difference_update(self.by_topic.get(topic, ()))
        return found
