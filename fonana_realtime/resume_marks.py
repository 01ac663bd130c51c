"""Where legacy connections that dropped left off (PROTOCOL.md 8, automatic resume).

Per (user, stream): the position (epoch, offset) of the last event written to a legacy
connection of that user that ended for a reason other than the client closing it, kept
WS_RESUME_SECONDS. In process without Redis; in Redis (one hash per user, hash-tagged)
with REDIS_URL, so a connection resumed on another worker or host, or after a deploy,
finds it.

Several tabs of one user: the lowest position wins (a tab may then see an event twice,
none misses one). But a connection never loses to a mark written *before it started*:
that mark was the one it resumed from (or older), and keeping it would replay to this tab
events it already had the next time it drops. So a mark is replaced when it is older
than the connection writing, of another epoch, or higher; kept otherwise.

A mark is `epoch|offset|written_at` (wall clock seconds); nothing in it is a secret.

Bounded per user, here, whoever writes marks: at most `max_marks` (WS_RESUME_MAX_MARKS,
default 256: one connection at WS_MAX_SUBSCRIPTIONS=200 plus its user stream, with room
for a few other tabs' streams). A write that leaves more drops the expired marks, then the
oldest written (their streams are simply not resumed); below the bound an expired mark
is ignored on read and goes with the whole hash, a window after the user's last write.
Unbounded, one user dropping connections subscribed to ever new channels reached 20,296
fields (2.37 MB) in 60 s, and each of its connects then read them all: 90-99 ms of a
worker's time instead of 1-2 ms (issue 18).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping

log = logging.getLogger("fonana_realtime.resume")

# At most this many users' marks in process; past it, expired ones are swept first.
MEMORY_USERS = 100_000
MAX_MARKS = 256             # per user, the default of WS_RESUME_MAX_MARKS


def keeps(old, epoch: str, offset: int, started_at: float, now: float, seconds: float) -> bool:
    """Whether an existing mark `old` = (epoch, offset, written_at) stays instead of the new."""
    if old is None:
        return False
    old_epoch, old_offset, written_at = old
    return (written_at >= started_at and now - written_at < seconds
            and old_epoch == epoch and old_offset <= offset)


def _pruned(mine: dict, now: float, seconds: float, max_marks: int) -> dict:
    """`mine` ({stream: (epoch, offset, written_at)}) within the window and, of those,
    the `max_marks` written last."""
    fresh = {s: m for s, m in mine.items() if now - m[2] < seconds}
    if len(fresh) > max_marks:
        newest = sorted(fresh.items(), key=lambda item: item[1][2])[-max_marks:]
        fresh = dict(newest)
    return fresh


class MemoryMarks:
    def __init__(self, seconds: float, clock=time.time, max_marks: int = MAX_MARKS):
        self.seconds = seconds
        self.clock = clock
        self.max_marks = max(1, max_marks)
        self._users: dict[str, dict] = {}    # user -> {stream: (epoch, offset, written_at)}

    def remember(self, user_id: str, marks: dict, started_at: float):
        now = self.clock()
        if len(self._users) >= MEMORY_USERS:
            self._sweep(now)
        mine = self._users.setdefault(user_id, {})
        for stream, (epoch, offset) in marks.items():
            if not keeps(mine.get(stream), epoch, offset, started_at, now, self.seconds):
                mine[stream] = (epoch, offset, now)
        if len(mine) > self.max_marks:
            self._users[user_id] = _pruned(mine, now, self.seconds, self.max_marks)

    def recall(self, user_id: str) -> dict:
        """{stream: (epoch, offset, written_at)} still within the window."""
        now = self.clock()
        mine = self._users.get(user_id)
        if not mine:
            return {}
        fresh = {s: m for s, m in mine.items() if now - m[2] < self.seconds}
        if len(fresh) != len(mine):
            if fresh:
                self._users[user_id] = dict(fresh)
            else:
                del self._users[user_id]
        return fresh

    def _sweep(self, now: float):
        self._users = {u: ms for u, ms in self._users.items()
                       if any(now - m[2] < self.seconds for m in ms.values())}
        while len(self._users) >= MEMORY_USERS:          # all fresh: drop the oldest users
            del self._users[next(iter(self._users))]


# KEYS[1] the user's hash; ARGV: now, started_at, seconds, max marks, then (stream, epoch,
# offset) triples. The same rule as `keeps`, in one round trip for all the connection's
# streams; then the same bound as `_pruned`, only when the hash is over it (HLEN is O(1);
# the prune reads the whole hash, at most max marks + one connection's streams).
_REMEMBER = """
local now, started, seconds, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 5, #ARGV, 3 do
  local stream, epoch, offset = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local keep = false
  local old = redis.call('HGET', KEYS[1], stream)
  if old then
    local e, o, t = string.match(old, '^(.*)|(%d+)|([%d.]+)$')
    if e and tonumber(t) >= started and now - tonumber(t) < seconds
        and e == epoch and tonumber(o) <= offset then
      keep = true
    end
  end
  if not keep then
    redis.call('HSET', KEYS[1], stream, epoch .. '|' .. ARGV[i + 2] .. '|' .. ARGV[1])
  end
end
if redis.call('HLEN', KEYS[1]) > cap then
  local all, fresh = redis.call('HGETALL', KEYS[1]), {}
  for i = 1, #all, 2 do
    local t = tonumber(string.match(all[i + 1], '|([%d.]+)$'))
    if t and now - t < seconds then
      fresh[#fresh + 1] = {t, all[i]}
    else
      redis.call('HDEL', KEYS[1], all[i])
    end
  end
  if #fresh > cap then
    table.sort(fresh, function(a, b) return a[1] < b[1] end)
    for i = 1, #fresh - cap do redis.call('HDEL', KEYS[1], fresh[i][2]) end
  end
end
redis.call('EXPIRE', KEYS[1], math.ceil(seconds))
return 1
"""


# KEYS[1] the user's hash; ARGV: now, seconds. The marks within the window as one string,
# `stream mark` per line: one bulk reply instead of two per field (redis-py parsed the
# HGETALL of 256 marks in ~640 us; this reply and its split take ~250 us).
_RECALL = """
local all, out = redis.call('HGETALL', KEYS[1]), {}
local now, seconds = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, #all, 2 do
  local t = tonumber(string.match(all[i + 1], '^.*|%d+|([%d.]+)$'))
  if t and now - t < seconds then out[#out + 1] = all[i] .. ' ' .. all[i + 1] end
end
return table.concat(out, '\\n')
"""


class Recalled(Mapping):
    """The marks one connect recalled, {stream: (epoch, offset, written_at)}, each parsed
    when asked for: a connect reads all of its user's marks (up to max_marks) but joins
    only a few of their streams."""

    __slots__ = ("_raw",)

    def __init__(self, blob: bytes):
        self._raw = dict(line.split(b" ", 1) for line in blob.split(b"\n")) if blob else {}

    def __getitem__(self, stream: str):
        return _parse(self._raw[stream.encode()])

    def __iter__(self):
        return (stream.decode() for stream in self._raw)

    def __len__(self):
        return len(self._raw)

    def pop(self, stream: str):
        return _parse(self._raw.pop(stream.encode()))


def _parse(raw: bytes):
    try:
        epoch, offset, written_at = raw.decode().rsplit("|", 2)
        return epoch, int(offset), float(written_at)
    except (ValueError, UnicodeDecodeError):
        return None


class RedisMarks:
    """The same in Redis: `<prefix>resume:{<user>}` is a hash stream -> mark, expiring
    WS_RESUME_SECONDS after its last write (each mark's own age is checked on read),
    at most `max_marks` fields."""

    def __init__(self, client, prefix: str, seconds: float, clock=time.time, max_marks: int = MAX_MARKS):
        self.client = client
        self.prefix = prefix
        self.seconds = seconds
        self.clock = clock
        self.max_marks = max(1, max_marks)
        self._script = client.register_script(_REMEMBER)
        self._recall = client.register_script(_RECALL)

    def key(self, user_id: str) -> str:
        return f"{self.prefix}resume:{{{user_id}}}"

    def remember(self, user_id: str, marks: dict, started_at: float):
        args = [repr(self.clock()), repr(started_at), repr(float(self.seconds)), str(self.max_marks)]
        for stream, (epoch, offset) in marks.items():
            args += [stream, epoch, str(int(offset))]
        self._script(keys=[self.key(user_id)], args=args)

    def recall(self, user_id: str) -> Recalled:
        """{stream: (epoch, offset, written_at)} still within the window."""
        return Recalled(self._recall(keys=[self.key(user_id)], args=[repr(self.clock()), repr(float(self.seconds))]))
