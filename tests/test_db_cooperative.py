"""The database never stalls the worker (issue 2, point 3).

A subscribe to a post channel asks PostgreSQL whether the user may see the post. While
that query is stuck (here: waiting on a table lock another session holds), another
client of the same single gevent worker must still get its `pong`.
"""
from __future__ import annotations

import psycopg2
import pytest

pytestmark = pytest.mark.postgres


def test_slow_query_does_not_block_other_clients(server, seed, pg_url):
    author = seed.user()
    post = seed.post(author)
    waiting = server.connect(author)
    other = server.connect(seed.user())
    assert waiting.welcome["data"]["worker"] == other.welcome["data"]["worker"]

    locker = psycopg2.connect(pg_url)
    try:
        with locker.cursor() as cur:
            # Every SELECT on posts now waits until this transaction ends.
            cur.execute('LOCK TABLE "posts" IN ACCESS EXCLUSIVE MODE')
        waiting.send_json({"type": "subscribe", "channel": {"type": "post", "postId": post}})
        # Wait until the server's query is really queued behind our lock.
        seed_conn = psycopg2.connect(pg_url)
        seed_conn.autocommit = True
        try:
            with seed_conn.cursor() as cur:
                for _ in range(200):
                    cur.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = '\"posts\"'::regclass")
                    if cur.fetchone()[0]:
                        break
                    cur.execute("SELECT pg_sleep(0.05)")
                else:
                    pytest.fail("the subscribe never queried posts")
        finally:
            seed_conn.close()

        other.ping()                                 # answered while the query still waits
        with pytest.raises(TimeoutError):            # and the subscribe really is still pending
            waiting.recv_raw(timeout=0.2)
    finally:
        locker.rollback()
        locker.close()
    subscribed = waiting.expect_type("subscribed")
    assert subscribed["data"]["channelKey"] == f"post_{post}"
