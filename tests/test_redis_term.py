"""A master that regressed (PROTOCOL.md 10, issue 21): Redis replication is asynchronous,
so a replica promoted by a failover may lack the last writes its master acknowledged.
Without more, the new master hands out those offsets again for other events: two
different events under one (epoch, stream, offset), and a client that recovers from
before the lost write is told recovered:true and never gets it.

Real redis-server processes: a master and its replica; the replica is cut off and
promoted by hand (what Sentinel does after a master dies), the old master keeps
accepting one write that never reaches it.
"""
from __future__ import annotations

import json

from fonana_realtime.redis_history import EPOCH, RedisHistory
from support.redis_server import RedisServer
from support.waiting import wait_until


def event(n: int) -> bytes:
    return json.dumps({"type": "custom", "n": n}, separators=(",", ":")).encode()


def test_a_promoted_replica_that_lost_acknowledged_writes_starts_a_new_epoch(tmp_path):
    master = RedisServer(tmp_path / "a").start()
    replica = RedisServer(tmp_path / "b").start()
    try:
        ra, rb = master.client(), replica.client()
        rb.replicaof("127.0.0.1", master.port)
        wait_until(lambda: rb.info("replication")["master_link_status"] == "up", 10, "replica linked")
        old = RedisHistory(ra, "fonana:rt:")
        for n in range(1, 4):
            old.publish(["channel:post_t"], event(n))
        assert ra.wait(1, 5000) == 1                    # offsets 1..3 reached the replica
        epoch, top = old.position("post_t")
        assert top == 3
        rb.replicaof("no", "one")                       # cut off and promoted
        lost = old.publish(["channel:post_t"], event(4))   # acknowledged by the old master only
        assert lost.positions["post_t"] == (epoch, 4)

        new = RedisHistory(rb, "fonana:rt:")
        # A client that had 1..3 asks the new master: it must not hear "nothing missed".
        rec = new.since("post_t", epoch, 3, 300)
        assert not rec.ok and rec.reason == EPOCH
        # The next event never reuses (epoch, offset 4) of the lost one.
        after = new.publish(["channel:post_t"], event(5))
        assert after.positions["post_t"] != (epoch, 4)
        assert after.positions["post_t"][0] != epoch
        assert after.positions["post_t"] == (rec.epoch, 1)
        # The same master keeps its epoch: only another writer starts a new one.
        assert new.publish(["channel:post_t"], event(6)).positions["post_t"] == (rec.epoch, 2)
        ra.close()
        rb.close()
    finally:
        replica.stop()
        master.stop()


def test_a_stream_written_before_terms_keeps_its_epoch(tmp_path):
    """Upgrading the server must not reset every stream: a meta without a term adopts
    the current one."""
    srv = RedisServer(tmp_path).start()
    try:
        r = srv.client()
        h = RedisHistory(r, "fonana:rt:")
        h.publish(["channel:post_u"], event(1))
        epoch, _ = h.position("post_u")
        r.hdel("fonana:rt:{post_u}:m", "r")             # as the script before terms left it
        assert h.publish(["channel:post_u"], event(2)).positions["post_u"] == (epoch, 2)
        assert r.hget("fonana:rt:{post_u}:m", "r")
        r.close()
    finally:
        srv.stop()
