"""A worker killed without a goodbye (SIGKILL: the OOM killer, a crash) loses its legacy
clients nothing a drain would not (issue 17): real gunicorn with two gevent workers, a
private redis-server for fan-out, history and resume marks (and again on a private Redis
Cluster, issue 21: the master releases the dead worker's marks through it), real
PostgreSQL, pacing and resume at their defaults."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from support.redis_server import RedisServer
from support.waiting import wait_until

pytestmark = pytest.mark.postgres

FANS = 3
ROUNDS = 30                    # each: a comment on the post and a notification to every fan
ROUND_SECONDS = 0.05           # faster than pacing writes them (one per type per 200 ms)


@pytest.fixture(scope="module", params=["single", "cluster"])
def private_redis(request, tmp_path_factory):
    """(REDIS_URL, a redis-py client of it that scans every node)."""
    if request.param == "cluster":
        from fonana_realtime.broker.link import open_link
        from support.redis_cluster import RedisCluster
        rs = RedisCluster(tmp_path_factory.mktemp("kill-cluster")).start()
        client = open_link(rs.url).client.real()
    else:
        import redis
        rs = RedisServer(tmp_path_factory.mktemp("kill-redis")).start()
        client = redis.Redis.from_url(rs.url)
    yield rs.url, client
    client.close()
    rs.stop()


def comment(post, k):
    return {"type": "comment_added", "postId": post, "comment": {"id": f"c{k}", "text": f"comment {k}"}}


def notification(fan, k):
    return {"type": "notification", "userId": fan, "notification": {
        "id": f"n{k}-{fan}", "userId": fan, "type": "SYSTEM_ANNOUNCEMENT", "title": "t", "message": "m",
        "isRead": False, "metadata": None, "createdAt": "2026-01-01T00:00:00.000Z"}}


def event_id(frame) -> str | None:
    if frame.get("type") == "comment_added":
        return frame["comment"]["id"]
    if frame.get("type") == "notification":
        return frame["notification"]["id"]
    return None


class Publisher(threading.Thread):
    """Publishes ROUNDS rounds, one list publish each, ROUND_SECONDS apart, through
    whichever worker takes the request. `answered`: ids of events answered 202, with their
    (stream, offset) in `where`; `unknown`: those whose request got no answer (the worker
    died under it: published or not, they may arrive at most once)."""

    def __init__(self, srv, post, fans):
        super().__init__(daemon=True)
        self.srv, self.post, self.fans = srv, post, fans
        self.answered: list[str] = []
        self.unknown: list[str] = []
        self.where: dict = {}
        self.rounds_done = threading.Semaphore(0)

    def run(self):
        session = requests.Session()
        session.trust_env = False
        started = time.monotonic()
        for k in range(ROUNDS):
            pause = started + k * ROUND_SECONDS - time.monotonic()
            if pause > 0:
                time.sleep(pause)              # the publishing schedule itself
            events = [comment(self.post, k)] + [notification(f, k) for f in self.fans]
            ids = [event_id(e) for e in events]
            try:
                r = session.post(self.srv.base_url + "/api/events", json={"events": events}, timeout=20,
                                 headers={"Authorization": f"Bearer {self.srv.api_key}", "Connection": "close"})
            except requests.RequestException:
                self.unknown.extend(ids)
            else:
                if r.status_code == 202:
                    for eid, position in zip(ids, r.json()["positions"]):
                        self.where[eid] = next(iter(position.items()))
                    self.answered.extend(ids)
                else:
                    self.unknown.extend(ids)
            self.rounds_done.release()


def unread_bytes(ws) -> int:
    """Bytes the kernel holds for the client that its reader thread has not taken yet."""
    import fcntl
    import struct
    import termios
    return struct.unpack("i", fcntl.ioctl(ws.conn.socket.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def collect(ws, into: list, until, timeout: float = 30.0) -> bool:
    """Event ids read from `ws` into `into` until `until()` (None: until nothing more came
    for `timeout` s and the socket holds nothing unread: on a loaded machine the client's
    reader thread can take longer than `timeout` to get to what arrived); False if the
    connection ended."""
    from websockets.exceptions import ConnectionClosed
    while until is None or not until():
        try:
            frame = ws.recv_json(timeout=timeout)
        except ConnectionClosed:
            return False
        except TimeoutError:
            if until is None:
                if unread_bytes(ws):
                    continue
                return True
            raise AssertionError(f"stalled after {into}") from None
        eid = event_id(frame)
        if eid is not None:
            into.append(eid)
    return True


def live_marks(client, prefix: str) -> dict:
    """{(user, stream): offset} of the workers' live marks in Redis (live_marks.py)."""
    out = {}
    for key in client.scan_iter(f"{prefix}live:*"):
        for field, value in client.hgetall(key).items():
            user, _, _, stream = field.decode().split("|", 3)
            out[(user, stream)] = int(value.decode().rsplit("|", 1)[1])
    return out


def kill_with_marks_current(victim: int, clients: dict, got: dict, publisher, redis_client, prefix: str):
    """SIGKILL the worker at a moment its marks in Redis cover what its clients got.

    A move of the marks reaches Redis a moment after the write it follows (the next turn of
    the worker's loop): a kill right after a write can cost a duplicate, never a loss
    (PROTOCOL.md 8). A test that kills the instant its client sees a frame would hit that
    window every time, so: stop the worker, let what it wrote arrive, and kill it if its
    marks are current, else let it run a moment and look again."""
    for _ in range(50):
        os.kill(victim, signal.SIGSTOP)
        for fan, ws in clients.items():
            assert collect(ws, got[fan], None, timeout=0.3)   # nothing more can come: it is stopped
        live = live_marks(redis_client, prefix)
        if not live or all(live.get((fan, publisher.where[e][0]), -1) >= publisher.where[e][1]
                           for fan in clients for e in got[fan]):       # (none: a server without them)
            os.kill(victim, signal.SIGKILL)
            return
        os.kill(victim, signal.SIGCONT)
        time.sleep(0.02)                        # a moment of running, not a wait for anything
    pytest.fail("the worker's live marks never caught up with what its clients got")


def test_a_killed_workers_legacy_clients_get_every_accepted_event_once(server_factory, pg_url, seed,
                                                                       private_redis):
    import secrets
    creator = seed.user(is_creator=True)
    post = seed.post(creator)
    fans = [seed.user() for _ in range(FANS)]
    env = {"WS_LEGACY_TYPE_GAP_MS": None, "WS_RESUME_SECONDS": None, "WS_WORKERS": 2,
           "REDIS_URL": private_redis[0], "REDIS_PREFIX": f"kill-{secrets.token_hex(3)}:"}
    srv = server_factory.start("kill", database_url=pg_url, env=env)
    channel = {"type": "post", "postId": post}

    # every fan's connection on the same worker (the one that will be killed)
    clients, victim = {}, None
    for fan in fans:
        for _ in range(40):
            ws = srv.connect(fan)
            worker = ws.welcome["data"]["worker"]
            if victim is None or worker == victim:
                victim = worker
                break
            ws.close()
        else:
            pytest.skip("the kernel never handed a connection to the same worker")
        ws.subscribe(channel)
        clients[fan] = ws
    got = {fan: [] for fan in fans}

    publisher = Publisher(srv, post, fans)
    publisher.start()
    # Some of it reached the clients, the rest is held by pacing (one frame per type per
    # 200 ms) when the worker dies: accepted events still unwritten, more being published.
    for fan in fans:
        assert collect(clients[fan], got[fan], lambda f=fan: len(got[f]) >= 4)
    redis_client = private_redis[1]
    kill_with_marks_current(victim, clients, got, publisher, redis_client, env["REDIS_PREFIX"])
    for fan in fans:
        assert not collect(clients[fan], got[fan], lambda: False), "the connection outlived its worker"
    # The master replaces the worker once it has run child_exit for the dead one (where the
    # dead worker's connections depart as a drain would have made them); websocket.ts
    # waits 1 s before its first reconnect.
    wait_until(lambda: srv.stdout_path.read_text().count("Booting worker with pid") >= 3, 15,
               "the killed worker replaced")
    for _ in range(ROUNDS):
        assert publisher.rounds_done.acquire(timeout=30)
    publisher.join(10)
    assert len(publisher.answered) > len(publisher.unknown)

    for fan in fans:
        ws = srv.connect(fan)
        assert ws.welcome["data"]["worker"] != victim
        ws.send_json({"type": "subscribe", "channel": channel})
        mine = [e for e in publisher.answered if e.startswith("c") or e.endswith(f"-{fan}")]
        assert collect(ws, got[fan], lambda f=fan, m=mine: set(m) <= set(got[f]))
        ws.barrier()
        maybe = {e for e in publisher.unknown if e.startswith("c") or e.endswith(f"-{fan}")}
        dupes = sorted({e for e in got[fan] if got[fan].count(e) > 1})
        assert dupes == [], f"{fan} got these twice: {dupes}"
        assert set(got[fan]) - set(mine) <= maybe
    assert '"resume_released"' in srv.output()          # one line from the master, with a count
