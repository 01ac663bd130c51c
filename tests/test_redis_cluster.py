"""Redis Cluster with sharded pub/sub (PROTOCOL.md 10, issue 21).

Real parts: a private cluster of three masters with a replica each (`redis-cli --cluster
create`, tests/support/redis_cluster.py), two gunicorn instances x two gevent workers with
`REDIS_URL=redis+cluster://...`, real WebSocket clients.

- delivery across both hosts for channels in different slots (so on different shards),
  each message only on its own shard's pub/sub;
- an event addressed to a user and a channel in different slots: one publication per slot;
- a shard's master SIGKILLed while both hosts publish at 20 events/s and v2 and legacy
  clients listen on both: the servers follow the promoted replica by themselves, every
  event answered 202 reaches every live client exactly once, a v2 client away across the
  failover recovers everything or is told `recovered: false`, and never are two events
  under one (epoch, stream, offset);
- one shard's listener links silently dead (a cluster whose nodes are reached through
  StallProxies): the per-shard probe notices it and the workers recover by themselves.
"""
from __future__ import annotations

import secrets
from collections import defaultdict

import pytest

from fonana_realtime.publisher import RedisPublisher
from support.failover import MAX_EVENTS, RATE, Publisher, drain, ticks
from support.redis_cluster import RedisCluster, posts_on_shards, slot_of
from support.hardening import metric_total
from support.redis_server import SPREAD_WORKER_CONNECTIONS, spread
from support.server import Server
from support.v2 import V2, subscribe_v2, v2
from support.waiting import wait_until

pytestmark = pytest.mark.postgres

WORKERS = 2
AFTER = 20                  # events accepted on the killed shard's new master before stopping


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield nodes
    finally:
        nodes.stop()


def hosts(tmp_path, cluster, pg_url, prefix, label, count: int = 2, workers: int = WORKERS):
    return [Server(tmp_path / name, name=name, database_url=pg_url,
                   env={"REDIS_URL": cluster.url, "REDIS_PREFIX": prefix, "WS_WORKERS": workers,
                        "WS_WORKER_CONNECTIONS": SPREAD_WORKER_CONNECTIONS,
                        "WS_LEGACY_TYPE_GAP_MS": 0})       # every tick to legacy clients too
            for name in (f"{label}-a", f"{label}-b")[:count]]


def started_on_two_shards(servers, seed, cluster, prefix):
    """`servers` started and ready; a fan, and two posts whose streams are on two shards,
    with their channels."""
    for srv in servers:
        srv.start()
    creator, fan = seed.user(is_creator=True), seed.user()
    posts = posts_on_shards(seed, cluster, prefix, creator, 2)
    wait_until(lambda: all_ready(servers), 30, "ready on the cluster")
    return fan, posts, [{"type": "post", "postId": post} for post in posts]


def next_ticks(ws, count: int) -> list[int]:
    """The `n` of the next `count` frames (each must be a tick)."""
    return ticks([ws.recv_json(timeout=10) for _ in range(count)])


def all_ready(servers) -> bool:
    return all(s.get("/ready").status_code == 200 for s in servers for _ in range(4))


def test_events_cross_hosts_through_the_cluster_on_their_own_shards(tmp_path, cluster, pg_url, seed):
    prefix = f"cl-{secrets.token_hex(3)}:"
    servers = hosts(tmp_path, cluster, pg_url, prefix, "cluster-deliver")
    try:
        for srv in servers:
            srv.start()
        creator, fan = seed.user(is_creator=True), seed.user()
        posts = posts_on_shards(seed, cluster, prefix, creator, 3)
        wait_until(lambda: all_ready(servers), 30, "ready on the cluster")
        listeners = {}
        for srv in servers:
            for post in posts:
                legacy = srv.connect(fan)
                legacy.subscribe({"type": "post", "postId": post})
                modern = v2(srv, fan)
                subscribe_v2(modern, {"type": "post", "postId": post})
                listeners.setdefault(post, []).extend([legacy, modern])
        # every post's channel is heard on its own master only (sharded pub/sub)
        for post in posts:
            owner = cluster.master_of(slot_of(prefix, f"post_{post}"))
            channel = f"{prefix}{{post_{post}}}"
            for node in (s["master"] for s in cluster.shards()):
                r = node.client()
                try:
                    heard = r.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1]
                finally:
                    r.close()
                assert (heard > 0) == (node is owner), f"{channel} on {node.port}: {heard} subscribers"
        for i, post in enumerate(posts):
            for n, srv in enumerate(servers):         # published through each host in turn
                r = srv.api("/api/events", {"event": {"type": "tick", "n": 10 * i + n},
                                            "channel": {"type": "post", "postId": post}})
                assert r.status_code == 202, r.text
        for i, post in enumerate(posts):
            for ws in listeners[post]:
                assert next_ticks(ws, 2) == [10 * i, 10 * i + 1]
                assert ticks(drain(ws)) == []

        # Presence (one write per master, keys of many slots) over both hosts: each post
        # has 4 connections of the fan, the fan's own stream 12.
        for srv in servers:
            for post in posts:
                want = {"channel": f"post_{post}", "connections": 4, "users": [fan]}
                wait_until(lambda srv=srv, post=post, want=want:
                           srv.api(f"/api/presence/post_{post}", method="GET").json() == want,
                           10, f"presence of post_{post} on {srv.name}")
        # the user's hash is on a master of its own, written by its own call of each batch:
        # the posts' being complete says nothing of it yet
        keys = f"user_{fan},{','.join('post_' + p for p in posts)}"
        want = {f"user_{fan}": 12, **{f"post_{p}": 4 for p in posts}}
        wait_until(lambda: servers[0].api(f"/api/presence?keys={keys}", method="GET").json()["counts"] == want,
                   10, "presence of the user and the posts together")

        # Another service publishing straight into the cluster, through publisher.py.
        pub = RedisPublisher(cluster.url, prefix)
        published = pub.publish({"type": "tick", "n": 99}, channel={"type": "post", "postId": posts[0]})
        pub.close()
        assert published.positions[f"post_{posts[0]}"][1] == 3
        for ws in listeners[posts[0]]:
            assert next_ticks(ws, 1) == [99]

        # Operator control (classic pub/sub: every node hears it) reaches every worker.
        assert servers[1].api("/api/disconnect", {"userId": fan, "code": 4321}).status_code == 202
        for ws in (ws for group in listeners.values() for ws in group):
            assert ws.expect_closed() == 4321
    finally:
        for srv in servers:
            srv.stop()


def test_an_event_for_a_user_and_a_channel_in_other_slots_reaches_both(tmp_path, cluster, pg_url, seed):
    prefix = f"cu-{secrets.token_hex(3)}:"
    servers = hosts(tmp_path, cluster, pg_url, prefix, "cluster-union")
    try:
        for srv in servers:
            srv.start()
        creator = seed.user(is_creator=True)
        post = seed.post(creator)
        for _ in range(200):
            fan = seed.user()
            if cluster.master_of(slot_of(prefix, f"user_{fan}")) is not \
                    cluster.master_of(slot_of(prefix, f"post_{post}")):
                break
        wait_until(lambda: all_ready(servers), 30, "ready on the cluster")
        channel = {"type": "post", "postId": post}
        own = v2(servers[0], fan)                           # holds its user stream only
        other = v2(servers[1], creator)                     # holds the post's stream only
        subscribe_v2(other, channel)
        # both streams, on both hosts: the event once each (the union's "once per
        # connection"), v2 under the route's first stream, the post's
        both = [v2(srv, fan) for srv in servers]
        for ws in both:
            subscribe_v2(ws, channel)
        legacy = [srv.connect(fan) for srv in servers]
        for ws in legacy:
            ws.subscribe(channel)
        r = servers[1].api("/api/events", {"event": {"type": "tick", "n": 1}, "userId": fan,
                                           "channel": channel})
        assert r.status_code == 202, r.text
        positions = r.json()["positions"][0]
        assert positions == {f"post_{post}": 1, f"user_{fan}": positions[f"user_{fan}"]}
        streams = [(own, f"user_{fan}"), (other, f"post_{post}")] + [(ws, f"post_{post}") for ws in both]
        for ws, stream in streams:
            frame = ws.expect_type("event", timeout=10)
            assert (frame["stream"], frame["offset"], frame["data"]["n"]) == (stream, positions[stream], 1)
        for ws in legacy:
            assert next_ticks(ws, 1) == [1]
        # a tick on the post after it: nothing came twice in between
        r = servers[0].api("/api/events", {"event": {"type": "tick", "n": 2}, "channel": channel})
        assert r.status_code == 202, r.text
        for ws in [other, *both, *legacy]:
            assert next_ticks(ws, 1) == [2], "the cross-slot event came twice"
        for ws, _ in streams:
            assert drain(ws) == []
    finally:
        for srv in servers:
            srv.stop()


def test_a_slot_moved_to_another_master_is_heard_there_and_nothing_is_lost(tmp_path, cluster, pg_url, seed):
    """A slot migration: the old master pushes `sunsubscribe` for the channels of the slot it
    gave up; each worker resubscribes them on the new owner and catches up from history."""
    prefix = f"cm-{secrets.token_hex(3)}:"
    servers = hosts(tmp_path, cluster, pg_url, prefix, "cluster-migrate")
    try:
        for srv in servers:
            srv.start()
        creator, fan = seed.user(is_creator=True), seed.user()
        post = seed.post(creator)
        channel = {"type": "post", "postId": post}
        stream_slot = slot_of(prefix, f"post_{post}")
        wait_until(lambda: all_ready(servers), 30, "ready on the cluster")
        listeners = []
        for srv in servers:
            legacy = srv.connect(fan)
            legacy.subscribe(channel)
            modern = v2(srv, fan)
            subscribe_v2(modern, channel)
            listeners += [legacy, modern]
        for n in range(5):
            assert servers[n % 2].api("/api/events", {"event": {"type": "tick", "n": n},
                                                      "channel": channel}).status_code == 202
        for ws in listeners:
            assert next_ticks(ws, 5) == list(range(5))
        owner = cluster.master_of(stream_slot)
        other = next(s["master"] for s in cluster.shards() if s["master"] not in (None, owner))
        kept = {node: node.listeners() for node in (s["master"] for s in cluster.shards()) if node is not owner}
        assert all(kept.values())
        cluster.migrate_slot(stream_slot, other)
        for n in range(5, 10):
            r = servers[n % 2].api("/api/events", {"event": {"type": "tick", "n": n}, "channel": channel})
            assert r.status_code == 202, r.text
        for ws in listeners:
            assert next_ticks(ws, 5) == list(range(5, 10))
            assert ticks(drain(ws)) == []
        wait_until(lambda: all_ready(servers), 30, "ready after the migration")
        for node in (s["master"] for s in cluster.shards()):
            r = node.client()
            try:
                heard = r.execute_command("PUBSUB", "SHARDNUMSUB", f"{prefix}{{post_{post}}}")[1]
            finally:
                r.close()
            assert (heard > 0) == (node is other), f"heard on {node.port}: {heard}"
        # only the connections to the master that gave the slot up were built again
        for node, ids in kept.items():
            assert ids <= node.listeners(), f"listener connections to {node.port} were rebuilt"
    finally:
        for srv in servers:
            srv.stop()


def test_a_shard_master_killed_under_publishing_loses_no_accepted_event_silently(
        tmp_path, cluster, pg_url, seed):
    prefix = f"cf-{secrets.token_hex(3)}:"
    servers = hosts(tmp_path, cluster, pg_url, prefix, "cluster-failover")
    publishers = []
    try:
        for srv in servers:
            srv.start()
        creator, fan = seed.user(is_creator=True), seed.user()
        # the doomed post on the master whose connection hears the control channel (each
        # worker's first, by address): operator calls must move to another connection
        posts = sorted(posts_on_shards(seed, cluster, prefix, creator, 3),
                       key=lambda p: cluster.master_of(slot_of(prefix, f"post_{p}")).address)
        doomed_post, other_post = posts[0], posts[1]
        doomed = {"type": "post", "postId": doomed_post}
        other = {"type": "post", "postId": other_post}
        stream = f"post_{doomed_post}"
        wait_until(lambda: all_ready(servers), 30, "ready on the cluster")
        live = {doomed_post: [], other_post: []}
        for srv in servers:
            for _ in range(2):                          # likely both workers of each host
                for post, channel in ((doomed_post, doomed), (other_post, other)):
                    ws = v2(srv, fan)
                    subscribe_v2(ws, channel)
                    legacy = srv.connect(fan)
                    legacy.subscribe(channel)
                    live[post] += [ws, legacy]
        away = v2(servers[0], fan)                      # the client that will be away
        subscribe_v2(away, doomed)

        publishers = [Publisher(servers, doomed, RATE / 2), Publisher(servers, other, RATE / 2)]
        for publisher in publishers:
            publisher.start()
        publisher = publishers[0]
        publisher.wait_accepted(10)
        seen = [f for f in drain(away) if f.get("type") == "event"]
        away.close()
        away_at = {"epoch": seen[-1]["epoch"], "offset": seen[-1]["offset"]}
        away_n = seen[-1]["data"]["n"]

        master = cluster.master_of(slot_of(prefix, stream))
        kept = {s["master"]: s["master"].listeners() for s in cluster.shards() if s["master"] not in (None, master)}
        assert len(kept) == 2 and all(kept.values())
        master.kill()                                   # SIGKILL
        killed_at = len(publisher.accepted) + 1         # (+1: an answer may be on its way)
        cluster.wait_promoted(master, slot_of(prefix, stream))
        publisher.wait_accepted(killed_at + AFTER)
        for p in publishers:
            p.stop.set()
            p.join(30)
            assert not p.is_alive()
        accepted = publisher.accepted
        wait_until(lambda: all_ready(servers), 30, "ready on the new master")
        # only the dead master's connections were built again (on the promoted replica)
        for node, ids in kept.items():
            assert ids <= node.listeners(), f"listener connections to {node.port} were rebuilt"

        by_position = defaultdict(set)              # (epoch, stream, offset) -> event n

        def note(frames):
            for f in frames:
                if f.get("type") == "event":
                    by_position[(f["epoch"], f["stream"], f["offset"])].add(f["data"]["n"])

        after_kill = accepted[killed_at:]           # answered by the new master
        for post, expected in ((doomed_post, after_kill), (other_post, publishers[1].accepted)):
            for i, ws in enumerate(live[post]):
                frames = drain(ws)
                note(frames)
                got = ticks(frames)
                assert len(got) == len(set(got)), f"{post} client {i}: an event twice"
                missing = set(expected) - set(got)
                assert not missing, f"{post} client {i}: accepted events never came: {sorted(missing)}"
                accepted_here = publishers[0 if post == doomed_post else 1].accepted
                assert set(got) <= set(accepted_here), f"{post} client {i}: an event never accepted"

        # A v2 client away across the failover: all it missed, or recovered:false.
        back = v2(servers[1], fan)
        data = subscribe_v2(back, doomed, since=away_at)
        replay = drain(back)
        note(replay)
        if data["recovered"]:
            assert ticks(replay) == [n for n in accepted if n > away_n], "recovered:true must be everything after"
        else:
            assert ticks(replay) == [], "recovered:false replays nothing"
        back.close()

        # A client whose position is after the failover recovers exactly what followed.
        new_epoch = [key for key, ns in by_position.items() if ns & set(after_kill) and key[1] == stream]
        assert new_epoch, "no v2 frame of an event accepted after the failover"
        epoch, _, offset = min(new_epoch, key=lambda k: k[2])
        first_n = next(iter(by_position[(epoch, stream, offset)]))
        again = v2(servers[0], fan)
        data = subscribe_v2(again, doomed, since={"epoch": epoch, "offset": offset})
        replay = drain(again)
        note(replay)
        assert data["recovered"] is True
        assert ticks(replay) == [n for n in accepted if n > first_n and n in after_kill]
        again.close()

        twice = {key: ns for key, ns in by_position.items() if len(ns) > 1}
        assert not twice, f"two events under one (epoch, stream, offset): {twice}"

        # Another Python service publishing straight into the cluster finds the new master too.
        pub = RedisPublisher(cluster.url, prefix)
        published = pub.publish({"type": "tick", "n": MAX_EVENTS}, channel=doomed)
        pub.close()
        assert published.positions[stream][0] == epoch
        for ws in live[doomed_post]:
            assert ticks([ws.recv_json(timeout=10)]) == [MAX_EVENTS]

        # Operator control still reaches every worker: its connection was the dead one.
        assert servers[0].api("/api/disconnect", {"userId": fan, "code": 4321}).status_code == 202
        for ws in (ws for group in live.values() for ws in group):
            assert ws.expect_closed() == 4321
    finally:
        for p in publishers:
            p.stop.set()
        for srv in servers:
            srv.stop()


@pytest.fixture
def proxied_cluster(tmp_path):
    """A cluster whose every client connection passes a StallProxy (support/redis_cluster.py)."""
    nodes = RedisCluster(tmp_path / "proxied-cluster", proxied=True).start()
    try:
        yield nodes
    finally:
        nodes.stop()


STALL_NOTICED = 15          # s: the probe notices within PROBE_EVERY + PROBE_WAIT (4 s)


def test_one_shards_silently_dead_links_are_noticed_and_the_workers_recover(
        tmp_path, proxied_cluster, pg_url, seed):
    """The listener links to one master stop receiving messages (the connection stays open,
    acknowledgements and PONGs pass, publishes succeed): each worker's probe, which has a
    channel on every shard, notices it within seconds, /metrics counts it, and the worker
    recovers by itself: every event published to that shard's post during and after the
    stall reaches every v2 and legacy client exactly once, in order, and so does every
    event of a post on another shard. Two workers; each has both kinds of client, each
    client hears both posts (their ticks apart: the stalled post's n < 100)."""
    cluster = proxied_cluster
    prefix = f"cs-{secrets.token_hex(3)}:"
    srv, = hosts(tmp_path, cluster, pg_url, prefix, "cluster-stall", count=1)
    try:
        fan, (stalled_post, other_post), _ = started_on_two_shards([srv], seed, cluster, prefix)
        clients = [*spread([srv], fan, WORKERS).values(), *spread([srv], fan, WORKERS, subprotocols=[V2]).values()]
        for ws in clients:
            for post in (stalled_post, other_post):
                channel = {"type": "post", "postId": post}
                if ws.welcome["data"].get("protocol") == V2:
                    subscribe_v2(ws, channel)
                else:
                    ws.subscribe(channel)
        bases = {stalled_post: 0, other_post: 100}     # a tick's post: which hundred its n is in

        def publish(round_: int):
            """Ticks 3*round_ .. +2 of each post, over HTTP."""
            for post, base in bases.items():
                for n in range(base + 3 * round_, base + 3 * round_ + 3):
                    r = srv.api("/api/events", {"event": {"type": "tick", "n": n},
                                                "channel": {"type": "post", "postId": post}})
                    assert r.status_code == 202, r.text

        def heard(rounds: range):
            """Every client hears the ticks of these rounds, each once, in order per post."""
            for i, ws in enumerate(clients):
                got = next_ticks(ws, 6 * len(rounds))
                for post, base in bases.items():
                    want = [base + n for n in range(3 * rounds.start, 3 * rounds.stop)]
                    assert [n for n in got if base <= n < base + 100] == want, \
                        f"client {i}, post_{post}: each event once, in order"
                assert ticks(drain(ws)) == [], f"client {i}: an event twice"

        publish(0)
        heard(range(0, 1))
        stalled_master = cluster.master_of(slot_of(prefix, f"post_{stalled_post}"))
        kept = {s["master"]: s["master"].listeners() for s in cluster.shards()
                if s["master"] not in (None, stalled_master)}
        proxy = stalled_master.proxy
        assert proxy.stall() == WORKERS                 # each worker's listener link to that master
        publish(1)                                      # during the stall (the stalled post's: withheld)
        wait_until(lambda: metric_total(srv, "fonana_rt_broker_stalls_total") >= WORKERS,
                   STALL_NOTICED, "both workers counted a stalled link")
        publish(2)                                      # while the workers recover
        wait_until(lambda: all_ready([srv]), STALL_NOTICED, "ready again after the stall")
        publish(3)                                      # after
        assert proxy.dropped >= 1                       # the stall really withheld messages
        heard(range(1, 4))
        assert metric_total(srv, "fonana_rt_broker_stalled") == 0      # nobody stalled now
        for node, ids in kept.items():              # only the stalled shard's were built again
            assert ids and ids <= node.listeners(), f"listener connections to {node.port} were rebuilt"
    finally:
        srv.stop()



def test_a_master_that_does_not_answer_does_not_hold_up_the_other_shards(tmp_path, proxied_cluster, pg_url, seed):
    """A master whose host went silent for the listener (it connects, then nothing comes
    back; commands and replication still pass): each attempt to join it again waits for
    the listener connection's timeout (5 s). The attempt runs beside the listener, so the
    other shards' events are delivered while one is still waiting; once the master answers
    again, its streams are subscribed and caught up: every event once, in order."""
    cluster = proxied_cluster
    prefix = f"cq-{secrets.token_hex(3)}:"
    srv, = hosts(tmp_path, cluster, pg_url, prefix, "cluster-silent", count=1, workers=1)
    try:
        fan, (silent_post, _), (silent, other) = started_on_two_shards([srv], seed, cluster, prefix)
        clients = [v2(srv, fan), srv.connect(fan)]
        for channel in (silent, other):
            subscribe_v2(clients[0], channel)
            clients[1].subscribe(channel)

        def publish(channel, n):
            r = srv.api("/api/events", {"event": {"type": "tick", "n": n}, "channel": channel})
            assert r.status_code == 202, r.text

        publish(silent, 0)
        publish(other, 100)
        for ws in clients:
            assert sorted(next_ticks(ws, 2)) == [0, 100]
        proxy = cluster.master_of(slot_of(prefix, f"post_{silent_post}")).proxy
        assert proxy.hold_listeners() == 1              # the worker's listener link to that master
        assert proxy.holds.wait(15), "no attempt to join the silent master again"
        waiting = set(proxy.held)                       # an attempt waiting for its timeout now
        publish(silent, 1)                              # accepted: commands still reach it
        publish(other, 101)
        for ws in clients:
            assert next_ticks(ws, 1) == [101]
        assert waiting <= proxy.held, "the other shard's event waited for the attempt to give up"
        proxy.release()
        publish(silent, 2)
        for ws in clients:
            assert next_ticks(ws, 2) == [1, 2]          # caught up once the master answers
            assert ticks(drain(ws)) == []
    finally:
        srv.stop()

def test_a_server_started_while_the_cluster_does_not_answer_says_so_and_refuses_publishes(tmp_path, seed, pg_url):
    """Nothing listens on the cluster's ports: the workers still boot (redis-py's
    RedisCluster connects in its constructor: it is built at first use), /ready answers
    503 and publishes 503, never a crash loop."""
    from support.redis_cluster import free_cluster_port
    url = f"redis+cluster://127.0.0.1:{free_cluster_port()},127.0.0.1:{free_cluster_port()}"
    srv = Server(tmp_path / "no-cluster", name="no-cluster", database_url=pg_url,
                 env={"REDIS_URL": url, "WS_WORKERS": 1})
    try:
        srv.start()
        r = srv.get("/ready")
        assert (r.status_code, r.json()["reason"]) == (503, "broker_unavailable")
        post = seed.post(seed.user(is_creator=True))
        r = srv.api("/api/events", {"event": {"type": "tick", "n": 1}, "channel": {"type": "post", "postId": post}})
        assert r.status_code == 503, r.text
    finally:
        srv.stop()


def test_a_shard_gone_for_good_leaves_the_others_serving_and_the_worker_ready(tmp_path, pg_url, seed):
    """A shard whose master and replica are both killed: nobody serves its slots again. The
    other shards' streams go on (subscribe, publish, deliver), that shard's publishes answer
    503, and `/ready` stays 200 saying `broker_shards_missing`: every host shares the
    missing shard, so taking them all out of a balancer would only refuse the rest
    (PROTOCOL.md 10). `fonana_rt_broker_link_down` says a worker lacks part of its link.
    The shard is the one serving slot 0, whose master redis-py's client asks first (its
    default node): a server started after it died serves the other shards too."""
    cluster = RedisCluster(tmp_path / "cluster").start()
    prefix = f"cg-{secrets.token_hex(3)}:"
    srv, = hosts(tmp_path, cluster, pg_url, prefix, "cluster-gone", count=1)
    later, = hosts(tmp_path, cluster, pg_url, prefix, "cluster-gone-later", count=1, workers=1)
    try:
        srv.start()
        creator, fan = seed.user(is_creator=True), seed.user()
        first = cluster.master_of(0)
        posts = posts_on_shards(seed, cluster, prefix, creator, 3)
        doomed_post = next(p for p in posts if cluster.master_of(slot_of(prefix, f"post_{p}")) is first)
        other_post = next(p for p in posts if p != doomed_post)
        doomed, other = ({"type": "post", "postId": p} for p in (doomed_post, other_post))
        wait_until(lambda: all_ready([srv]), 30, "ready on the cluster")
        listeners = []
        for _ in range(2):
            modern = v2(srv, fan)
            subscribe_v2(modern, other)
            legacy = srv.connect(fan)
            legacy.subscribe(other)
            listeners += [modern, legacy]
        shard = next(s for s in cluster.shards() if s["master"] is first)
        for node in (shard["master"], *shard["replicas"]):
            node.kill()                                 # SIGKILL, the whole shard

        def degraded(server):
            answers = [server.get("/ready") for _ in range(4)]     # likely every worker
            return all(r.status_code == 200 and r.json().get("degraded") == "broker_shards_missing"
                       for r in answers)
        wait_until(lambda: degraded(srv), 30, "/ready 200 with broker_shards_missing")
        assert metric_total(srv, "fonana_rt_broker_link_down") >= 1

        late = v2(srv, fan)                             # joins the healthy shard's channel now
        subscribe_v2(late, other)
        listeners.append(late)
        for n in range(3):
            r = srv.api("/api/events", {"event": {"type": "tick", "n": n}, "channel": other})
            assert r.status_code == 202, r.text
        r = srv.api("/api/events", {"event": {"type": "tick", "n": 99}, "channel": doomed})
        assert r.status_code == 503, r.text
        for ws in listeners:
            assert next_ticks(ws, 3) == [0, 1, 2]
            assert ticks(drain(ws)) == []
        assert degraded(srv)

        later.start()                                   # its client's first master is the dead one
        wait_until(lambda: degraded(later), 30, "a server started now: /ready 200, degraded")
        newcomer = v2(later, fan)
        subscribe_v2(newcomer, other)
        r = later.api("/api/events", {"event": {"type": "tick", "n": 3}, "channel": other})
        assert r.status_code == 202, r.text
        for ws in [*listeners, newcomer]:
            assert next_ticks(ws, 1) == [3]
    finally:
        srv.stop()
        later.stop()
        cluster.stop()
