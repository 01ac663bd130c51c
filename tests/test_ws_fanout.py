"""Fan-out across gunicorn workers (PROTOCOL.md section 1 `REDIS_URL`, `WS_WORKERS`; section 5).

Without Redis more than one worker would silently lose events, so the server must refuse or
force one worker. With Redis, an event published on any worker, or PUBLISHed to Redis by
another process, reaches every connection on every worker.
"""
import json
import secrets

import pytest
import redis

from support.server import ServerFactory, ServerStartError
from support.redis_server import SHARED_URL as REDIS_URL

pytestmark = pytest.mark.postgres


def _spread_connections(srv, user, want_workers=2, batch=8, seconds=15.0):
    """Connections of `user` on `want_workers` distinct workers, as the welcome frame's
    `worker` field reports (the server documents it; without it, one batch is used).

    Which worker accepts is up to the kernel, and a worker that is still booting accepts
    nothing: open concurrent batches until both show up, keeping one connection per
    worker from each batch."""
    import time
    from concurrent.futures import ThreadPoolExecutor
    kept: dict = {}
    deadline = time.monotonic() + seconds
    with ThreadPoolExecutor(batch) as pool:
        while True:
            opened = list(pool.map(lambda _: srv.connect(user), range(batch)))
            for ws in opened:
                worker = ws.welcome["data"].get("worker")
                if worker is None or len(kept.setdefault(worker, [])) < batch // 2:
                    kept.setdefault(worker, []).append(ws)
                else:
                    ws.close()
            if None in kept or len(kept) >= want_workers or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # polling which workers accept: only handshakes can tell
    conns = [ws for group in kept.values() for ws in group]
    return conns, set(kept)


def test_more_workers_without_redis_still_deliver_to_every_connection(server_factory, pg_url, seed):
    uid = seed.user()
    srv = server_factory.create("workers-no-redis", database_url=pg_url, env={"WS_WORKERS": 3})
    try:
        srv.start()
    except ServerStartError:  # refusing to start is one allowed answer ...
        rc = srv.wait_exit(10)
        assert rc not in (None, 0), f"no /health and exit code {rc} with WS_WORKERS=3 and no REDIS_URL"
        assert "REDIS_URL" in srv.output() or "WS_WORKERS" in srv.output(), srv.output_tail()
        return
    # ... forcing one worker is the other: then nothing may be lost
    conns = [srv.connect(uid) for _ in range(9)]
    event = {"type": "feed_update", "userId": uid, "posts": [{"id": "w"}]}
    for _ in range(3):
        srv.publish({"event": event})
        for ws in conns:
            ws.expect_event(event)
    for ws in conns:
        ws.barrier()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory, pg_url):
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:  # pragma: no cover - environment
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    prefix = f"fonana:test:{secrets.token_hex(4)}:"
    factory = ServerFactory(tmp_path_factory)
    srv = factory.start("redis-2-workers", database_url=pg_url,
                        env={"REDIS_URL": REDIS_URL, "REDIS_PREFIX": prefix, "WS_WORKERS": 2,
                             "WS_MAX_CONNECTIONS_PER_USER": 100})
    srv.redis_prefix = prefix
    yield srv
    factory.stop_all()


def test_ready_with_redis(redis_server):
    r = redis_server.get("/ready")
    assert r.status_code == 200, (r.status_code, r.text[:300])


def test_events_reach_connections_on_every_worker(redis_server, seed):
    creator, fan = seed.user(), seed.user()
    post = seed.post(creator)
    conns, workers = _spread_connections(redis_server, fan)
    assert None in workers or len(workers) >= 2, f"all {len(conns)} connections landed on one worker"
    for ws in conns:
        ws.subscribe({"type": "post", "postId": post})
    for n in range(4):  # several requests: they land on different workers too
        user_event = {"type": "feed_update", "userId": fan, "posts": [{"id": f"p{n}"}]}
        channel_event = {"type": "post_liked", "postId": post, "userId": creator, "likesCount": n}
        redis_server.publish({"event": user_event})
        redis_server.publish({"event": channel_event})
        for ws in conns:
            ws.expect_event(user_event)
            ws.expect_event(channel_event)
    # both addresses at once: still exactly once per connection, across workers
    both = {"type": "post_liked", "postId": post, "userId": creator, "likesCount": 99}
    redis_server.publish({"event": both, "userId": fan})
    redis_server.publish({"event": both, "channel": f"post_{post}", "userId": fan})
    for ws in conns:
        ws.expect_event(both)
        ws.expect_event(both)
        ws.barrier()


def test_external_redis_publish_reaches_users_and_channels(redis_server, seed):
    creator, fan = seed.user(), seed.user()
    post = seed.post(creator)
    conns, _ = _spread_connections(redis_server, fan, batch=6)
    holder = redis_server.connect(creator)
    holder.subscribe({"type": "post", "postId": post})
    client = redis.Redis.from_url(REDIS_URL)
    prefix = redis_server.redis_prefix
    user_event = {"type": "notifications_cleared", "userId": fan}
    client.publish(f"{prefix}user:{fan}", json.dumps({"event": user_event}))
    for ws in conns:
        ws.expect_event(user_event)
    channel_event = {"type": "comment_deleted", "postId": post, "commentId": "c-9"}
    client.publish(f"{prefix}channel:post_{post}", json.dumps({"event": channel_event}))
    holder.expect_event(channel_event)
    for ws in conns + [holder]:
        ws.barrier()
    client.close()
