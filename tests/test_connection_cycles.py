"""A closed connection is freed by reference counting, not left in reference cycles for
Python's cyclic collector, which the worker runs in full only every FULL_COLLECTION_EVERY
middle-generation collections (gunicorn_worker.py): ~17 objects per closed connection
waited for it (docs/BENCHMARKS.md).

bench/connection_cycles.py runs in its own process, as a worker does (gevent patched, the
real app from `create_app` with the embedded SQLite store, in-process broker, pacing and
resume on): legacy and fonana.v2 clients over socketpairs through the real handshake, each
subscribed to a post channel, sent one event and closed, with the collector off; then it
counts what one collection finds unreachable. Nothing may be, and nothing may still hold
the closed connections (no cycle must not mean a leak).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONNECTIONS = 30


def test_closed_connections_leave_no_reference_cycles():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "connection_cycles.py"), "--json",
                          "--connections", str(CONNECTIONS)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])["."]
    assert set(results) == {"legacy", "fonana.v2"}
    for protocol, result in results.items():
        assert result["by_type"] == {}, f"{protocol}: objects in cycles per closed connection {result['by_type']}"
        assert result["per_connection"] == 0
        assert result["alive"] == 0, f"{protocol}: {result['alive']} closed connections still held"
