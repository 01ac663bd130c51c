"""Where legacy connections that dropped left off (PROTOCOL.md 8, automatic resume).

Per (user, stream): the position (epoch, offset) of the last event written to a legacy
connection of that user that ended for a reason other than the client closing it, kept
WS_RESUME_SECONDS. In process without Redis; in Redis (one string per user, hash-tagged)
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
for a few other tabs' streams). A write drops the expired marks (in process: when it
leaves more than the bound), then the oldest written past the bound (their streams are
simply not resumed); a mark that expires after the user's last write is ignored on read
and goes with the whole key, a window after that write.
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


# KEYS[1] the user's marks; ARGV: now, started_at, seconds, max marks, then (stream, epoch,
# offset) triples. The user's marks are one string, a line `stream epoch|offset|written_at`
# per stream: read, the same rule as `keeps` for each new mark, then the bound of `_pruned`
# (expired ones dropped, then the oldest past max marks), written back newest first with
# the window as TTL, in one atomic step. One string and not a hash because a connect reads them all:
# redis-py took ~640 us of a worker's CPU to parse the HGETALL of 256 fields (two bulk
# strings each), ~1,100 us with our parse; one bulk string and its split take ~150 us.
_REMEMBER = """
local now, started, seconds, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local marks, n = {}, 0
local blob = redis.call('GET', KEYS[1])
if blob then
  for stream, epoch, offset, t in string.gmatch(blob, '([^ \\n]+) ([^\\n]*)|(%d+)|([%d.]+)') do
    if now - tonumber(t) < seconds then
      if not marks[stream] then n = n + 1 end
      marks[stream] = {epoch, offset, t}
    end
  end
end
for i = 5, #ARGV, 3 do
  local stream, epoch, offset = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = marks[stream]
  if not (old and tonumber(old[3]) >= started and old[1] == epoch
          and tonumber(old[2]) <= tonumber(offset)) then
    if not old then n = n + 1 end
    marks[stream] = {epoch, offset, ARGV[1]}
  end
end
local list = {}
for stream, m in pairs(marks) do list[#list + 1] = {tonumber(m[3]), stream} end
table.sort(list, function(a, b) return a[1] > b[1] end)      -- newest first (Recalled)
for i = #list, cap + 1, -1 do list[i] = nil end
local lines = {}
for i = 1, #list do
  local stream = list[i][2]
  local m = marks[stream]
  lines[i] = stream .. ' ' .. m[1] .. '|' .. m[2] .. '|' .. m[3]
end
if #lines == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], table.concat(lines, '\\n'), 'EX', math.ceil(seconds))
end
return #lines
"""


class Recalled(Mapping):
    """The marks one connect recalled, {stream: (epoch, offset, written_at)} within the
    window, each parsed only when asked for: a connect reads all of its user's marks (up
    to max_marks) but joins only a few of their streams."""

    __slots__ = ("_raw",)

    def __init__(self, blob: bytes | None, now: float, seconds: float):
        lines = blob.split(b"\n") if blob else []
        # Newest first: the marks within the window are a prefix, found by bisection (the
        # age of every line cost ~150 us of the ~200 us of 256 marks; this split, ~45 us).
        low, high = 0, len(lines)
        while low < high:
            middle = (low + high) // 2
            if now - _written_at(lines[middle]) < seconds:
                low = middle + 1
            else:
                high = middle
        self._raw = dict(line.split(b" ", 1) for line in lines[:low])

    def __getitem__(self, stream: str):
        return _parse(self._raw[stream.encode()])

    def __iter__(self):
        return (stream.decode() for stream in self._raw)

    def __len__(self):
        return len(self._raw)

    def pop(self, stream: str):
        return _parse(self._raw.pop(stream.encode()))


def _written_at(line: bytes) -> float:
    try:
        return float(line[line.rfind(b"|") + 1:])
    except ValueError:
        return float("-inf")          # not ours: treated as expired


def _parse(raw: bytes):
    try:
        epoch, offset, written_at = raw.decode().rsplit("|", 2)
        return epoch, int(offset), float(written_at)
    except (ValueError, UnicodeDecodeError):
        return None


class RedisMarks:
    """The same in Redis: `<prefix>marks:{<user>}` holds a user's marks (at most
    `max_marks`), expiring WS_RESUME_SECONDS after its last write (each mark's own age is
    checked on read)."""

    def __init__(self, client, prefix: str, seconds: float, clock=time.time, max_marks: int = MAX_MARKS):
        self.client = client
        self.prefix = prefix
        self.seconds = seconds
        self.clock = clock
        self.max_marks = max(1, max_marks)
        self._script = client.register_script(_REMEMBER)

    def key(self, user_id: str) -> str:
        # `marks:`, not the `resume:` hash of before: a rolling deploy meets no old type
        return f"{self.prefix}marks:{{{user_id}}}"

    def remember(self, user_id: str, marks: dict, started_at: float, client=None):
        """`client`: a pipeline to add the write to (live_marks.release), else at once."""
        args = [repr(self.clock()), repr(started_at), repr(float(self.seconds)), str(self.max_marks)]
        for stream, (epoch, offset) in marks.items():
            args += [stream, epoch, str(int(offset))]
        self._script(keys=[self.key(user_id)], args=args, client=client)

    def recall(self, user_id: str) -> Recalled:
        """{stream: (epoch, offset, written_at)} still within the window."""
        return Recalled(self.client.get(self.key(user_id)), self.clock(), self.seconds)
