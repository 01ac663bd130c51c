#!/usr/bin/env python3
"""What positions and history cost in Redis memory (PROTOCOL.md 7, issue 9).

    .venv/bin/python bench/history_memory.py              # defaults below
    .venv/bin/python bench/history_memory.py --streams 2000 --event-bytes 400

Starts a private redis-server (free port, no persistence) so `used_memory` deltas are
ours alone, and measures through the real publish script (fonana_realtime/redis_history):

- an idle stream: one that a client asked the position of (or whose history expired):
  only its meta hash (epoch, top offset), kept WS_HISTORY_META_SECONDS;
- 1,000 active streams holding 1, 10 and 100 (= WS_HISTORY_SIZE, the bound) events;
- Redis time per publication: the script against a bare PUBLISH (INFO commandstats);
- the same with the history held as Redis Streams (XADD MAXLEN) instead of lists, the
  alternative that redis_history.py's docstring compares against.

Each figure is `used_memory` after minus before, divided by the stream count, and
`MEMORY USAGE` of one sample key. One JSON line per measurement, then a table.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fonana_realtime.redis_history import RedisHistory, history_key, meta_key  # noqa: E402

PREFIX = "fonana:rt:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: Path):
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = redis.Redis(port=port, protocol=2, socket_timeout=30)
    deadline = time.monotonic() + 10
    while True:
        try:
            r.ping()
            return proc, r
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.02)


def used(r) -> int:
    return int(r.info("memory")["used_memory"])


def payload(n: int, size: int) -> bytes:
    body = {"type": "comment_added", "postId": "p", "comment": {"id": f"c{n}", "content": ""}}
    raw = json.dumps(body, separators=(",", ":"))
    pad = max(0, size - len(raw))
    body["comment"]["content"] = "x" * pad
    return json.dumps(body, separators=(",", ":")).encode()


def measure(r, label: str, streams: int, fill) -> dict:
    r.flushall()
    before = used(r)
    fill()
    after = used(r)
    row = {"what": label, "streams": streams, "bytes_per_stream": round((after - before) / streams),
           "total_mb": round((after - before) / 1e6, 2)}
    print(json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--event-bytes", type=int, default=250, help="size of the flat event JSON")
    args = ap.parse_args()
    n = args.streams
    with tempfile.TemporaryDirectory(prefix="fonana-histmem-") as tmp:
        proc, r = start_redis(Path(tmp))
        try:
            h = RedisHistory(r, PREFIX)
            rows = []
            version = r.info("server")["redis_version"]
            h.publish(["channel:post_probe"], payload(0, args.event_bytes))
            probe = r.lindex(history_key(PREFIX, "post_probe"), -1)     # one real envelope

            def idle():
                with r.pipeline(transaction=False) as pipe:
                    for i in range(n):
                        h._position(keys=[meta_key(PREFIX, f"post_{i}"), history_key(PREFIX, f"post_{i}")],
                                    args=[h.meta_seconds], client=pipe)
                    pipe.execute()
            rows.append(measure(r, "idle stream (meta only)", n, idle))
            rows[-1]["memory_usage_key"] = r.memory_usage(meta_key(PREFIX, "post_0"), samples=0)

            for events in (1, 10, 100):
                def active(events=events):
                    for e in range(events):
                        with r.pipeline(transaction=False) as pipe:
                            for i in range(n):
                                keys, argv = h.publish_args([f"channel:post_{i}"], payload(e, args.event_bytes))
                                h._publish(keys=keys, args=argv, client=pipe)
                            pipe.execute()
                rows.append(measure(r, f"active, {events} events (list)", n, active))
                rows[-1]["memory_usage_key"] = r.memory_usage(history_key(PREFIX, "post_0"), samples=0)

                def as_stream(events=events):
                    for e in range(events):
                        with r.pipeline(transaction=False) as pipe:
                            for i in range(n):
                                pipe.hincrby(meta_key(PREFIX, f"post_{i}"), "t", 1)
                                pipe.xadd(history_key(PREFIX, f"post_{i}"), {"m": probe}, id=f"{e + 1}-0",
                                          maxlen=100, approximate=False)
                            pipe.execute()
                rows.append(measure(r, f"active, {events} events (stream, for comparison)", n, as_stream))
                rows[-1]["memory_usage_key"] = r.memory_usage(history_key(PREFIX, "post_0"), samples=0)

            # Redis time per publication (INFO commandstats usec_per_call), 5,000 each:
            # the script (one stream, history kept) against a bare PUBLISH of the same bytes.
            r.flushall()
            r.config_resetstat()
            body = payload(1, args.event_bytes)
            for start in range(0, 5000, 500):
                with r.pipeline(transaction=False) as pipe:
                    for i in range(start, start + 500):
                        keys, argv = h.publish_args([f"channel:post_{i % n}"], body)
                        h._publish(keys=keys, args=argv, client=pipe)
                        pipe.publish(f"{PREFIX}channel:post_{i % n}", probe)
                    pipe.execute()
            stats = r.info("commandstats")
            per_call = {name: stats[f"cmdstat_{name}"]["usec_per_call"] for name in ("evalsha", "publish")
                        if f"cmdstat_{name}" in stats}
            print(json.dumps({"redis_usec_per_call": per_call}), flush=True)

            # CPU per publication, one call at a time as the server's API makes them:
            # this (publishing) process and the redis-server, script against bare PUBLISH.
            def redis_cpu():
                info = r.info("cpu")
                return info["used_cpu_user"] + info["used_cpu_sys"]

            cost = {}
            for label in ("script", "bare PUBLISH", "script", "bare PUBLISH"):
                count = 3000
                c0, r0 = time.process_time(), redis_cpu()
                for i in range(count):
                    if label == "script":
                        h.publish([f"channel:post_{i % n}"], body)
                    else:
                        r.publish(f"{PREFIX}channel:post_{i % n}", probe)
                c1, r1 = time.process_time(), redis_cpu()
                mine, theirs = (c1 - c0) / count * 1e6, (r1 - r0) / count * 1e6
                best = cost.get(label)
                if best is None or mine + theirs < sum(best):
                    cost[label] = (mine, theirs)
            print(json.dumps({"cpu_us_per_publication": cost}), flush=True)
        finally:
            proc.kill()
            proc.wait()
    print(f"\nenvelope {len(probe)} B (flat event {args.event_bytes} B); {n} streams; redis-server {version}")
    print(f"Redis time per publication: script {per_call.get('evalsha', 0):.1f} us, "
          f"bare PUBLISH {per_call.get('publish', 0):.1f} us (INFO commandstats, 5,000 each)")
    for label, (mine, theirs) in cost.items():
        print(f"CPU per publication ({label}, best of 2 x 3,000): publisher {mine:.1f} us, redis-server {theirs:.1f} us")
    print("| what | bytes per stream (used_memory delta) | MEMORY USAGE of one key | total |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['what']} | {row['bytes_per_stream']:,} | {row.get('memory_usage_key', 0):,} | "
              f"{row['total_mb']} MB per {n:,} |")


if __name__ == "__main__":
    main()
