"""This worker's registry: who is connected, who holds which channel.

`deliver` hands one pre-built frame to each local target of a route, once per
connection even when the route names both a user and a channel it holds. The hub
tells the broker when a topic gains its first local subscriber or loses its last,
so a worker only listens for what it can deliver.
"""
from __future__ import annotations


def channel_topic(key: str) -> str:
    return "channel:" + key


def user_topic(user_id: str) -> str:
    return "user:" + user_id


class Hub:
    def __init__(self):
        self.connections: set = set()
        self.by_topic: dict[str, set] = {}     # "channel:post_P" / "user:U" -> connections
        self.on_first = lambda topic: None      # set by the broker: start listening
        self.on_last = lambda topic: None       # stop listening
        self.on_join = lambda topic: None       # a later subscriber (the broker may make it
                                                # wait until the first one's listen is confirmed)

    # ---- membership ------------------------------------------------------------

    def _join(self, topic: str, conn):
        members = self.by_topic.get(topic)
        if members is None:
            members = self.by_topic[topic] = set()
            members.add(conn)
            self.on_first(topic)
        else:
            members.add(conn)
            self.on_join(topic)

    def _leave(self, topic: str, conn):
        members = self.by_topic.get(topic)
        if members is None:
            return
        members.discard(conn)
        if not members:
            del self.by_topic[topic]
            self.on_last(topic)

    def add(self, conn):
        self.connections.add(conn)
        self._join(user_topic(conn.user_id), conn)

    def remove(self, conn):
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        for key in conn.channels:
            self._leave(channel_topic(key), conn)
        conn.channels.clear()
        self._leave(user_topic(conn.user_id), conn)

    def subscribe(self, conn, key: str):
        if key not in conn.channels:
            conn.channels.add(key)
            self._join(channel_topic(key), conn)

    def unsubscribe(self, conn, key: str):
        if key in conn.channels:
            conn.channels.discard(key)
            self._leave(channel_topic(key), conn)

    def user_connection_count(self, user_id: str) -> int:
        return len(self.by_topic.get(user_topic(user_id), ()))

    # ---- delivery ---------------------------------------------------------------

    def targets(self, topics) -> set | tuple:
        """The local connections of a route's topics, each once."""
        if len(topics) == 1:
            return tuple(self.by_topic.get(topics[0], ()))   # a copy: sends may close connections
        found: set = set()
        for topic in topics:
            found.update(self.by_topic.get(topic, ()))
        return found

    def deliver(self, topics, data: bytes, frames: int = 1) -> tuple[int, int]:
        """Send `data` (`frames` whole frames) to every local connection of `topics`.

        Returns (delivered, dropped) counted in frames: dropped are targets that were
        closing or whose backlog overflowed with this write."""
        targets = self.targets(topics)
        accepted = 0
        for conn in targets:
            if conn.send(data, frames):
                accepted += 1
        return accepted * frames, (len(targets) - accepted) * frames

    def deliver_batch(self, batch) -> tuple[int, int]:
        """Deliver [(topics, frame), ...] in order, one write per connection.

        Events published in the same turn of the event loop reach a connection as one
        write instead of one each: when the batch has one audience, the joined frames are
        one shared bytes object; otherwise each connection gets the frames addressed to
        it, still in publish order and each once."""
        runs: list[tuple[tuple, list]] = []          # consecutive events with the same topics
        for topics, frame in batch:
            if runs and runs[-1][0] == topics:
                runs[-1][1].append(frame)
            else:
                runs.append((topics, [frame]))
        if len(runs) == 1:
            topics, frames = runs[0]
            return self.deliver(topics, b"".join(frames), len(frames))
        per_conn: dict = {}
        for topics, frames in runs:
            chunk, count = b"".join(frames), len(frames)
            for conn in self.targets(topics):
                parts = per_conn.get(conn)
                if parts is None:
                    per_conn[conn] = [chunk, count]
                else:
                    parts[0] += chunk
                    parts[1] += count
        delivered = dropped = 0
        for conn, (data, count) in per_conn.items():
            if conn.send(data, count):
                delivered += count
            else:
                dropped += count
        return delivered, dropped
