"""Redis Sentinel (PROTOCOL.md 10, issue 21): a master SIGKILLed while two hosts publish
over HTTP at 20 events/s and v2 and legacy clients listen on both hosts.

Real parts: a master, its replica and three sentinels (tests/support/redis_sentinel.py),
two gunicorn instances x two gevent workers with `REDIS_URL=redis+sentinel://...`.
Before the kill the replica is cut off from its master (its replication handshake made
to fail), so the last events the master answers 202 for never reach it: the promoted
replica has regressed, which asynchronous replication allows at any time.

What must hold:
- the servers find the new master by themselves: publishing, listening, history, /ready;
- never two different events under one (epoch, stream, offset), over every v2 frame any
  client saw, live or replayed;
- a v2 client that was away across the failover recovers with `since`: exactly the events
  accepted after its position, once each, or `recovered: false`; from a position after
  the failover, exactly what followed;
- every live client (v2 and legacy, both hosts) gets every event accepted by the new
  master exactly once (the workers catch up from history after the failover), and no
  event twice.
"""
from __future__ import annotations

import secrets
from collections import defaultdict

import pytest

from fonana_realtime.publisher import RedisPublisher
from support.failover import MAX_EVENTS, Publisher, drain, ticks
from support.redis_sentinel import SentinelSet
from support.redis_server import SPREAD_WORKER_CONNECTIONS
from support.server import Server
from support.v2 import subscribe_v2, v2
from support.waiting import wait_until

pytestmark = pytest.mark.postgres

WORKERS = 2
LOST = 3                    # events the master accepts after its replica was cut off
AFTER = 30                  # events accepted by the new master before publishing stops


def test_a_master_killed_under_publishing_loses_no_accepted_event_silently(tmp_path, pg_url, seed):
    sentinels = SentinelSet(tmp_path / "sentinel").start()
    prefix = f"st-{secrets.token_hex(3)}:"
    servers = [Server(tmp_path / name, name=name, database_url=pg_url,
                      env={"REDIS_URL": sentinels.url, "REDIS_PREFIX": prefix, "WS_WORKERS": WORKERS,
                           "WS_WORKER_CONNECTIONS": SPREAD_WORKER_CONNECTIONS,
                           "WS_LEGACY_TYPE_GAP_MS": 0})       # every tick to legacy clients too
               for name in ("sentinel-host-a", "sentinel-host-b")]
    publisher = None
    try:
        for srv in servers:
            srv.start()
        creator, fan = seed.user(is_creator=True), seed.user()
        post = seed.post(creator)
        channel = {"type": "post", "postId": post}
        stream = f"post_{post}"
        wait_until(lambda: all(s.get("/ready").status_code == 200 for s in servers for _ in range(4)),
                   20, "ready on the sentinel's master")
        live = []
        for srv in servers:
            for _ in range(2):                          # likely both workers of each host
                ws = v2(srv, fan)
                subscribe_v2(ws, channel)
                live.append(ws)
                legacy = srv.connect(fan)
                legacy.subscribe(channel)
                live.append(legacy)
        away = v2(servers[0], fan)                      # the client that will be away
        subscribe_v2(away, channel)

        publisher = Publisher(servers, channel)
        publisher.start()
        publisher.wait_accepted(10)
        seen = [f for f in drain(away) if f.get("type") == "event"]
        away.close()
        away_at = {"epoch": seen[-1]["epoch"], "offset": seen[-1]["offset"]}
        away_n = seen[-1]["data"]["n"]

        master = sentinels.master()
        replica = sentinels.replica_of(master)
        rc = replica.client()
        rc.config_set("masterauth", "not-the-password")  # its next handshake with the master fails
        rc.execute_command("CLIENT", "KILL", "TYPE", "master")
        rc.close()
        before_cut = len(publisher.accepted)
        publisher.wait_accepted(before_cut + LOST)
        mc, rc = master.client(), replica.client()
        lost_bytes = mc.info("replication")["master_repl_offset"] - rc.info("replication")["master_repl_offset"]
        mc.close()
        rc.close()
        assert lost_bytes > 0, "the master's last writes must be missing from the replica"
        master.stop()                                   # SIGKILL
        killed_at = len(publisher.accepted) + 1         # (+1: an answer may be on its way)
        sentinels.wait_promoted(master)
        publisher.wait_accepted(killed_at + AFTER)
        publisher.stop.set()
        publisher.join(30)
        accepted = publisher.accepted
        assert not publisher.is_alive()
        wait_until(lambda: all(s.get("/ready").status_code == 200 for s in servers for _ in range(4)),
                   20, "ready on the new master")

        by_position = defaultdict(set)              # (epoch, stream, offset) -> event n

        def note(frames):
            for f in frames:
                if f.get("type") == "event":
                    by_position[(f["epoch"], f["stream"], f["offset"])].add(f["data"]["n"])

        after_kill = accepted[killed_at:]           # answered by the new master
        for i, ws in enumerate(live):
            frames = drain(ws)
            note(frames)
            got = ticks(frames)
            assert len(got) == len(set(got)), f"live client {i}: an event twice"
            missing = set(after_kill) - set(got)
            assert not missing, f"live client {i}: events accepted after the failover never came: {sorted(missing)}"
            assert set(got) <= set(accepted), f"live client {i}: an event never accepted"

        # A v2 client away across the failover: all it missed, or recovered:false.
        back = v2(servers[1], fan)
        data = subscribe_v2(back, channel, since=away_at)
        replay = drain(back)
        note(replay)
        if data["recovered"]:
            assert ticks(replay) == [n for n in accepted if n > away_n], "recovered:true must be everything after"
        else:
            assert ticks(replay) == [], "recovered:false replays nothing"
        back.close()

        # A client whose position is after the failover recovers exactly what followed.
        new_epoch = [key for key, ns in by_position.items() if ns & set(after_kill)]
        assert new_epoch, "no v2 frame of an event accepted after the failover"
        epoch, _, offset = min(new_epoch, key=lambda k: k[2])
        first_n = next(iter(by_position[(epoch, stream, offset)]))
        again = v2(servers[0], fan)
        data = subscribe_v2(again, channel, since={"epoch": epoch, "offset": offset})
        replay = drain(again)
        note(replay)
        assert data["recovered"] is True
        assert ticks(replay) == [n for n in accepted if n > first_n and n in after_kill]
        again.close()

        twice = {key: ns for key, ns in by_position.items() if len(ns) > 1}
        assert not twice, f"two events under one (epoch, stream, offset): {twice}"

        # Another Python service publishing straight into Redis finds the new master too.
        pub = RedisPublisher(sentinels.url, prefix)
        published = pub.publish({"type": "tick", "n": MAX_EVENTS}, channel=channel)
        pub.close()
        assert published.positions[stream][0] == epoch
        for ws in live:
            assert ticks([ws.recv_json(timeout=10)]) == [MAX_EVENTS]
    finally:
        if publisher is not None:
            publisher.stop.set()
        for srv in servers:
            srv.stop()
        sentinels.stop()
