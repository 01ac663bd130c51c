"""Closing on SIGTERM (PROTOCOL.md 2.5: 1001 "server shutting down"): clients are told to
reconnect, and the server exits cleanly."""
import pytest

pytestmark = pytest.mark.postgres


def test_sigterm_closes_connections_with_1001_and_exits_zero(server_factory, pg_url, seed):
    uid = seed.user()
    srv = server_factory.start("drain", database_url=pg_url, env={"WS_DRAIN_SECONDS": 1})
    clients = [srv.connect(uid) for _ in range(3)]
    for ws in clients:
        ws.subscribe({"type": "feed", "userId": uid})
    import os
    import signal
    os.kill(srv.proc.pid, signal.SIGTERM)
    for ws in clients:
        assert ws.expect_closed(timeout=20) == 1001
    rc = srv.wait_exit(30)
    assert rc == 0, f"exit code {rc} after SIGTERM"
