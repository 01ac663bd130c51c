"""Resume marks of a worker's live legacy connections, kept current in Redis, so that a
worker killed without a goodbye (SIGKILL, the OOM killer, a crash) loses nothing a
drain would not (PROTOCOL.md 8, automatic resume; issue 17).

A departing connection writes its marks itself (resume.Resume.depart). A killed worker
departs nobody: before this, its legacy clients reconnected to no marks and the events
accepted but not yet written to them (held by pacing, in a backlog, published while
they reconnected) were never replayed. So while a connection is live, every move of its
marks (a real write, or the join position of a stream) is copied to one hash per worker,
`<prefix>live:<host>:<pid>`, field `<user>|<connection id>|<started_at>|<stream>`, value
`epoch|offset`:

- batched: moves are collected in process and written by one greenlet of the worker
  once it gets the CPU after the turn that made them (one script call: HSET of the latest
  position per field, HDEL of departed connections' fields, PEXPIRE), so a fan-out to
  5,000 connections is one write, not 5,000; a connection's marks move at most once per
  pacing gap per type, whatever the publish rate. The fields go as one text argument
  split by the script: redis-py's HSET with a mapping cost the worker 2.2 us per field,
  this 0.44 us (1,000 fields, bench/live_marks_cost.py has the fan-out figure);
- a departure (any) deletes the connection's fields: marks of connections that left are
  the departing connection's own business, as before;
- when a worker exits, the gunicorn master (gunicorn.conf.py child_exit) hands what is
  left in its hash to `release`: each connection found there departs as it would have
  (`RedisMarks.remember`, the same rule per connection), then the hash goes. For a
  graceful exit the hash is already empty.

A user id with `|`, a space or a line break in it (ids are otherwise free text) gets no
live copy: its connections resume as before this module, from a departure only.

What a kill can still do: an event written to the socket in the turn before the kill,
whose move had not reached Redis, is replayed once more (never lost). Without Redis
(one worker, marks in process) a killed worker takes its marks with it.
"""
from __future__ import annotations

import logging
import socket
import time

log = logging.getLogger("fonana_realtime.resume")

# After a failed write, the next attempt waits this long (the moves wait, newest kept).
RETRY_SECONDS = 1.0
# Redis's Lua takes at most ~8,000 values in one unpack: HSET/HDEL in slices of this many.
_SLICE = 7000

# KEYS[1] the worker's hash; ARGV[1] `field value` lines to set, ARGV[2] field lines to
# delete, ARGV[3] ms until the hash expires (each write pushes it back). PEXPIRE, which no
# other script of ours calls: a test tells these calls from the others by it.
_WRITE = """
local put, gone = {}, {}
for f, v in string.gmatch(ARGV[1], '([^ \\n]+) ([^\\n]+)') do put[#put + 1] = f; put[#put + 1] = v end
for i = 1, #put, %d do redis.call('HSET', KEYS[1], unpack(put, i, math.min(i + %d, #put))) end
for f in string.gmatch(ARGV[2], '[^\\n]+') do gone[#gone + 1] = f end
for i = 1, #gone, %d do redis.call('HDEL', KEYS[1], unpack(gone, i, math.min(i + %d, #gone))) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return #put / 2
""" % (_SLICE, _SLICE - 1, _SLICE, _SLICE - 1)


def on_cluster(client) -> bool:
    from .broker.link_cluster import on_cluster as cluster
    return cluster(client)


def live_key(prefix: str, pid: int, host: str | None = None) -> str:
    return f"{prefix}live:{host or socket.gethostname()}:{pid}"


class LiveMarks:
    """One worker's copy of its live legacy connections' marks (see the module doc).
    `moved` and `left` are called from the delivery path and must stay cheap: they only
    note what changed; the writer greenlet (`start`) builds and sends the batch."""

    def __init__(self, client, key: str, seconds: float):
        self.client = client
        self.key = key
        self.seconds = max(1, int(seconds))
        self._script = client.register_script(_WRITE)
        self._moves: dict = {}               # (conn, stream) -> position, or None: delete
        # conn -> "user|id|started|", the start of its fields, made on its first write
        # (formatting it per move was ~40 % of this module's cost per move)
        self._prefixes: dict = {}
        self._wake = None                    # gevent Event once started

    def moved(self, conn, pairs):
        """`conn`'s marks moved to these (stream, (epoch, offset)) pairs; streams it does
        not hold (another stream of a union event) are not its to resume."""
        moves = self._moves
        channels, user_stream = conn.channels, conn.user_stream
        for stream, position in pairs:
            if (stream == user_stream or stream in channels) and position[0] is not None:
                moves[(conn, stream)] = position
        if moves and self._wake is not None:
            self._wake.set()

    def left(self, conn, streams, departed: bool = False):
        """`conn` no longer holds these streams (an unsubscribe), or `departed` (its own
        marks are written by Resume.depart): their fields go."""
        moves = self._moves
        for stream in streams:
            moves[(conn, stream)] = None
        if departed:
            moves[(conn, None)] = None       # and its field prefix, once the batch is written
        if moves and self._wake is not None:
            self._wake.set()

    def start(self):
        import gevent
        from gevent.event import Event
        self._wake = Event()
        gevent.spawn(self._run)

    def _run(self):
        import gevent
        while True:
            self._wake.wait()
            self._wake.clear()
            batch, self._moves = self._moves, {}
            if not batch:
                continue
            try:
                self.write(batch)
            except Exception as exc:         # Redis away: keep the moves, newer ones win
                log.warning("live resume marks not written", extra={
                    "event": "resume_unavailable", "reason": type(exc).__name__, "count": len(batch)})
                batch.update(self._moves)
                self._moves = batch
                gevent.sleep(RETRY_SECONDS)
                self._wake.set()

    def write(self, batch: dict):
        """One script call for a batch of moves and departures."""
        put, gone, values, prefixes, departed = [], [], {}, self._prefixes, []
        for (conn, stream), position in batch.items():
            if stream is None:
                departed.append(conn)
                continue
            prefix = prefixes.get(conn)
            if prefix is None:
                user = conn.user_id
                if "|" in user or " " in user or "\n" in user:
                    continue                 # see the module doc
                prefix = prefixes[conn] = f"{user}|{conn.id}|{conn.started_at!r}|"
            if position is None:
                gone.append(prefix + stream)
            else:
                value = values.get(position)     # one text per position: a fan-out shares it
                if value is None:
                    value = values[position] = f"{position[0]}|{position[1]}"
                put.append(f"{prefix}{stream} {value}")
        self._script(keys=[self.key], args=["\n".join(put), "\n".join(gone), self.seconds * 1000])
        for conn in departed:
            prefixes.pop(conn, None)


def release(client, resume_marks, key: str) -> int:
    """A worker ended (in the master, gunicorn child_exit): every connection left in its
    hash departs as it would have (`resume_marks` is the RedisMarks); then the hash goes.
    Returns the connections released."""
    raw = client.hgetall(key)
    if not raw:
        return 0
    conns: dict = {}                         # (user, conn id) -> (started_at, {stream: (epoch, offset)})
    for field, value in raw.items():
        try:
            user, conn_id, started_at, stream = field.decode().split("|", 3)
            epoch, offset = value.decode().rsplit("|", 1)
            entry = conns.setdefault((user, conn_id), (float(started_at), {}))
            entry[1][stream] = (epoch, int(offset))
        except (ValueError, UnicodeDecodeError):
            continue                         # not ours: never fails a worker's exit
    if on_cluster(client):          # a cluster pipeline refuses scripts; one user's marks are one slot
        for (user, _), (started_at, marks) in conns.items():
            resume_marks.remember(user, marks, started_at)
        client.delete(key)
        return len(conns)
    pipe = client.pipeline(transaction=False)
    for (user, _), (started_at, marks) in conns.items():
        resume_marks.remember(user, marks, started_at, client=pipe)
    pipe.delete(key)
    pipe.execute()
    return len(conns)


def release_worker(settings, pid: int) -> None:
    """gunicorn.conf.py child_exit (in the master): one short-lived Redis client; a
    failure is logged, never raised into the master. Timeouts of 1 s: the master does
    nothing else meanwhile (Redis away costs each exiting worker that much)."""
    if not settings.redis_url or settings.resume_seconds <= 0:
        return
    started = time.perf_counter()
    try:
        from .broker.link import open_link
        from .resume_marks import RedisMarks
        client = open_link(settings.redis_url, 1.0).client      # any topology (PROTOCOL.md 10)
        try:
            resume_marks = RedisMarks(client, settings.redis_prefix, settings.resume_seconds,
                                      max_marks=settings.resume_max_marks)
            count = release(client, resume_marks, live_key(settings.redis_prefix, pid))
        finally:
            client.close()
    except Exception as exc:
        log.warning("live resume marks of worker %d not released", pid,
                    extra={"event": "resume_unavailable", "reason": type(exc).__name__})
        return
    if count:
        log.info("resume marks of worker %d kept for its %d connections (%.1f ms)", pid, count,
                 (time.perf_counter() - started) * 1000, extra={"event": "resume_released", "count": count})
