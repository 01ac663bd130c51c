#!/usr/bin/env python3
"""Redis Cluster against one Redis (issue 21): publish throughput of the publish script on
three shards against one Redis, the Redis CPU each publish costs, and how many connections
a worker holds to Redis.

    .venv/bin/python bench/cluster.py                    # 3 rounds, medians
    .venv/bin/python bench/cluster.py --rounds 5 --procs 4 --seconds 5

Throughput: a private Redis and a private Cluster (three masters with a replica each,
tests/support/redis_cluster.py) on this machine, in the same run, every Redis process
pinned to core 0 and the publishers to core 1 (a 2-core machine has no third core to give
a third shard: what is measured is the cost per publish, and what one core of Redis
sustains on each topology); per round each gets
--procs publisher processes (publisher.RedisPublisher, the publish script the server runs:
offsets, history, (S)PUBLISH) that publish for --seconds to streams picked at random among
--streams, one call at a time (a round trip each, as the server's API does; then the
publishers' own CPU is the bound), or --batch calls pipelined per master (then Redis is
the bound). Reported:
publishes/s over all processes, and the Redis CPU per publish (user+sys of every node of
the topology, replicas included, from INFO, divided by the publishes: what each publish
costs Redis, less dependent on the machine's load than the rate; and of the masters
alone). The single Redis has a replica too, as each of the cluster's masters has.

Connections: one gunicorn host with --workers workers on each topology; clients on 30
channels spread over every shard, 30 events published over HTTP; then CLIENT LIST on every
node (replication links and this script's own connection left out), per worker.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from support.db import Seed, TestDatabase  # noqa: E402
from support.redis_cluster import RedisCluster  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402
from support.server import Server, gunicorn_cmd  # noqa: E402

INSPECT = "bench-inspect"
REDIS_CPU, GEN_CPU = 0, 1       # every Redis node on core 0, the publishers on core 1


def pin(nodes) -> None:
    for node in nodes:
        os.sched_setaffinity(node.proc.pid, {REDIS_CPU})


def publish_for(url: str, prefix: str, streams: int, seconds: float, seed: int, batch: int, out) -> None:
    """Publish for `seconds`: one script call at a time (`batch` 1, as the server's API
    does), or `batch` calls pipelined per master (the Redis side is the bound then)."""
    from redis.exceptions import NoScriptError

    from fonana_realtime.broker.link_cluster import node_pipeline, on_cluster
    from fonana_realtime.publisher import RedisPublisher
    from fonana_realtime.redis_history import PUBLISH_SCRIPT
    os.sched_setaffinity(0, {GEN_CPU})
    rnd = random.Random(seed)
    pub = RedisPublisher(url, prefix, history_size=100, history_seconds=300, history_meta_seconds=3600)
    history = pub.history
    sha = pub.client.script_load(PUBLISH_SCRIPT)
    count = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if batch == 1:
            pub.publish({"type": "tick", "n": count}, channel=f"post_b{rnd.randrange(streams)}")
            count += 1
            continue
        pipes = {}
        for _ in range(batch):
            keys, args = history.publish_args([f"channel:post_b{rnd.randrange(streams)}"], b'{"type":"tick"}')
            if on_cluster(pub.client):
                name, pipe = node_pipeline(pub.client, keys[0])
                pipe = pipes.setdefault(name, pipe)
            else:
                pipe = pipes.setdefault("", pub.client.pipeline(transaction=False))
            pipe.evalsha(sha, len(keys), *keys, *args)
        for pipe in pipes.values():
            try:
                count += len(pipe.execute())
            except NoScriptError:
                sha = pub.client.script_load(PUBLISH_SCRIPT)
    pub.close()
    out.put(count)


def cpu_seconds(nodes) -> float:
    total = 0.0
    for node in nodes:
        r = node.client()
        try:
            info = r.info("cpu")
            total += info["used_cpu_user"] + info["used_cpu_sys"]
        finally:
            r.close()
    return total


def throughput(url: str, nodes, masters, args) -> dict:
    prefix = f"bc-{secrets.token_hex(3)}:"
    queue = multiprocessing.Queue()
    cpu_before, masters_before = cpu_seconds(nodes), cpu_seconds(masters)
    procs = [multiprocessing.Process(target=publish_for,
                                     args=(url, prefix, args.streams, args.seconds, i, args.batch, queue))
             for i in range(args.procs)]
    started = time.monotonic()
    for p in procs:
        p.start()
    counts = [queue.get(timeout=args.seconds + 60) for _ in procs]
    elapsed = time.monotonic() - started
    for p in procs:
        p.join(30)
    cpu, masters_cpu = cpu_seconds(nodes) - cpu_before, cpu_seconds(masters) - masters_before
    total = sum(counts)
    return {"publishes_per_s": round(total / elapsed), "redis_cpu_us_per_publish": round(cpu / total * 1e6, 1),
            "masters_cpu_us_per_publish": round(masters_cpu / total * 1e6, 1)}


def connections(url: str, nodes, db_url: str, workdir: Path, workers: int) -> dict:
    seed = Seed(db_url)
    srv = Server(workdir / "conn-host", name="conn-host", database_url=db_url,
                 command=["taskset", "-c", str(GEN_CPU), *gunicorn_cmd()],
                 env={"REDIS_URL": url, "REDIS_PREFIX": f"cc-{secrets.token_hex(3)}:", "WS_WORKERS": workers})
    clients = []
    try:
        srv.start()
        creator, fan = seed.user(is_creator=True), seed.user()
        posts = [seed.post(creator) for _ in range(30)]
        deadline = time.monotonic() + 30
        while not all(srv.get("/ready").status_code == 200 for _ in range(2 * workers)):
            assert time.monotonic() < deadline, "not ready"
        for _ in range(4 * workers):            # likely every worker
            ws = srv.connect(fan)
            for post in posts:
                ws.subscribe({"type": "post", "postId": post})
            clients.append(ws)
        for n, post in enumerate(posts):
            assert srv.api("/api/events", {"event": {"type": "tick", "n": n},
                                           "channel": {"type": "post", "postId": post}}).status_code == 202
        time.sleep(1.0)                         # let presence and the probes run once
        total = listener = 0
        for node in nodes:
            r = node.client()
            try:
                r.client_setname(INSPECT)
                for c in r.client_list():
                    if c.get("name") != INSPECT and not set(c.get("flags", "")) & {"S", "M"}:
                        total += 1
                        listener += c.get("name", "").startswith("fonana-rt-sub-")
            finally:
                r.close()
        return {"all": total / workers, "listener": listener / workers}
    finally:
        for ws in clients:
            ws.close()
        srv.stop()
        seed.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--streams", type=int, default=3000)
    p.add_argument("--batch", type=int, default=1,
                   help="publish calls pipelined per master (1: one at a time, as the API)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="fonana-cluster-bench-") as tmp:
        tmp = Path(tmp)
        single = RedisServer(tmp / "single").start()
        replica = RedisServer(tmp / "single-replica").start()     # as the cluster's masters have
        single.client().config_set("repl-diskless-sync-delay", "0")
        replica.client().replicaof("127.0.0.1", single.port)
        cluster = RedisCluster(tmp / "cluster").start()
        pin([single, replica, *cluster.nodes])
        db = TestDatabase().create()
        try:
            rounds = {"single": [], "cluster": []}
            for _ in range(args.rounds):
                masters = [s["master"] for s in cluster.shards()]
                for name, url, nodes, heads in (("single", single.url, [single, replica], [single]),
                                                ("cluster", cluster.url, cluster.nodes, masters)):
                    result = throughput(url, nodes, heads, args)
                    rounds[name].append(result)
                    print(json.dumps({"topology": name, **result}), flush=True)
            summary = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                       for name, runs in rounds.items()}
            summary["cluster_over_single"] = round(summary["cluster"]["publishes_per_s"]
                                                   / summary["single"]["publishes_per_s"], 2)
            summary["connections_per_worker"] = {
                "single": connections(single.url, [single], db.url, tmp / "cs", args.workers),
                "cluster": connections(cluster.url, cluster.nodes, db.url, tmp / "cc", args.workers)}
            print("median over", args.rounds, "rounds:", json.dumps(summary))
        finally:
            db.drop()
            cluster.stop()
            replica.stop()
            single.stop()


if __name__ == "__main__":
    main()
