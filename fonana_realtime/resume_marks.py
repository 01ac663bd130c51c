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
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("fonana_realtime.resume")

# At most this many users' marks in process; past it, expired ones are swept first.
MEMORY_USERS = 100_000


def keeps(old, epoch: str, offset: int, started_at: float, now: float, seconds: float) -> bool:
    """Whether an existing mark `old` = (epoch, offset, written_at) stays instead of the new."""
    if old is None:
        return False
    old_epoch, old_offset, written_at = old
    return (written_at >= started_at and now - written_at < seconds
            and old_epoch == epoch and old_offset <= offset)


class MemoryMarks:
    def __init__(self, seconds: float, clock=time.time):
        self.seconds = seconds
        self.clock = clock
        self._users: dict[str, dict] = {}    # user -> {stream: (epoch, offset, written_at)}

    def remember(self, user_id: str, marks: dict, started_at: float):
        now = self.clock()
        if len(self._users) >= MEMORY_USERS:
            self._sweep(now)
        mine = self._users.setdefault(user_id, {})
        for stream, (epoch, offset) in marks.items():
            if not keeps(mine.get(stream), epoch, offset, started_at, now, self.seconds):
                mine[stream] = (epoch, offset, now)

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


# KEYS[1] the user's hash; ARGV: now, started_at, seconds, then (stream, epoch, offset) triples.
# The same rule as `keeps`, in one round trip for all the connection's streams.
_REMEMBER = """
local now, started, seconds = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, #ARGV, 3 do
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
redis.call('EXPIRE', KEYS[1], math.ceil(seconds))
return 1
"""


def _parse(raw: bytes):
    try:
        epoch, offset, written_at = raw.decode().rsplit("|", 2)
        return epoch, int(offset), float(written_at)
    except (ValueError, UnicodeDecodeError):
        return None


class RedisMarks:
    """The same in Redis: `<prefix>resume:{<user>}` is a hash stream -> mark, expiring
    WS_RESUME_SECONDS after its last write (each mark's own age is checked on read)."""

    def __init__(self, client, prefix: str, seconds: float, clock=time.time):
        self.client = client
        self.prefix = prefix
        self.seconds = seconds
        self.clock = clock
        self._script = client.register_script(_REMEMBER)

    def key(self, user_id: str) -> str:
        return f"{self.prefix}resume:{{{user_id}}}"

    def remember(self, user_id: str, marks: dict, started_at: float):
        args = [repr(self.clock()), repr(started_at), repr(float(self.seconds))]
        for stream, (epoch, offset) in marks.items():
            args += [stream, epoch, str(int(offset))]
        self._script(keys=[self.key(user_id)], args=args)

    def recall(self, user_id: str) -> dict:
        now = self.clock()
        out = {}
        for stream, raw in self.client.hgetall(self.key(user_id)).items():
            mark = _parse(raw)
            if mark is not None and now - mark[2] < self.seconds:
                out[stream.decode()] = mark
        return out
