#!/usr/bin/env python3
"""Objects a closed connection leaves in reference cycles: what only Python's cyclic
collector frees, and the worker runs a full collection only every FULL_COLLECTION_EVERY
middle-generation collections (gunicorn_worker.py).

    .venv/bin/python bench/connection_cycles.py                       # this tree
    .venv/bin/python bench/connection_cycles.py --commits 94dc2a3 .   # a commit against this tree
    .venv/bin/python bench/connection_cycles.py --edges               # which references close the cycles

For each tree (a commit, taken with `git archive`, or this working tree as `.`), one
process builds the real app (`create_app`: embedded SQLite store, in-process broker,
pacing and resume on, as `make run` has them) and, for each protocol (legacy, then
fonana.v2), runs CONNECTIONS clients one after another over socketpairs: the handshake
through `web/websocket.handshake`, `subscribe` to post_demo-open-post, one event published
to it and read by the client, then a close (the server's read loop answers it and the
connection ends: unregistered, socket closed). Before them, WARM_UP clients of the same
kind and a full collection; during them the collector is off (`gc.disable`), with
`gc.DEBUG_SAVEALL` so that what the collection afterwards finds unreachable stays in
`gc.garbage` to be counted by type. Before that collection the pacer (which keeps a
closed legacy connection's pacing state until its next prune, ~1 s) is waited for.
Printed per protocol: unreachable objects per closed connection, by type, and how many
closed `Connection`s something still holds after the collection (alive, and not in the
unreachable set: 0, else "no cycles" could be a leak instead).
What this leaves out: gunicorn's request path (its parser and environ, which end with the
request greenlet), the kernel, the network.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONNECTIONS = 200
WARM_UP = 5
PROTOCOLS = ("", "fonana.v2")
PACER_WAIT_SECONDS = 10.0


def measure(tree: Path, connections: int, edges: bool) -> dict:
    """Runs in the child process (gevent patched, the tree's package imported)."""
    sys.path[:0] = [str(tree), str(ROOT / "bench")]
    from gevent import monkey
    monkey.patch_all()
    import collections
    import gc
    import tempfile
    import time

    import gevent
    from socketpair_clients import close, connect, masked, read_until

    from fonana_realtime.app import create_app
    from fonana_realtime.auth import mint_token
    from fonana_realtime.connection import Connection
    from fonana_realtime.events import Route
    from fonana_realtime.settings import load_settings
    from fonana_realtime.store.demo import FAN, OPEN_POST
    from fonana_realtime.web import websocket

    secret = "bench-secret-" + "x" * 40
    settings = load_settings({"DATA_DIR": tempfile.mkdtemp(), "JWT_SECRET": secret, "WS_API_SECRET": "k" * 40,
                              "WS_HANDSHAKES_PER_IP_PER_SEC": "100000", "WS_HANDSHAKES_PER_IP_BURST": "100000",
                              "LOG_LEVEL": "WARNING"})
    app = create_app(settings)
    rt = app.extensions["fonana_realtime"]
    rt.start()
    token = mint_token(FAN, secret)
    channel = "post_" + OPEN_POST
    subscribe = masked(1, json.dumps({"type": "subscribe", "channel": {"type": "post", "postId": OPEN_POST}}).encode())
    published = [0]

    def one(protocol: str):
        client = connect(websocket, app, rt, token, protocol)
        client.sendall(subscribe)
        read_until(client, b'"subscribed"')
        published[0] += 1
        likes = b'"likesCount":%d' % published[0]
        rt.broker.publish(Route(channels=(channel,)),
                          b'{"type":"post_liked","postId":"%s","userId":"u1",%s}' % (OPEN_POST.encode(), likes))
        read_until(client, likes)
        close(client)

    def settled():
        """Every connection gone from the hub, and the pacer holding none (bounded)."""
        deadline = time.monotonic() + PACER_WAIT_SECONDS
        gevent.sleep(0.05)
        while rt.hub.connections or (rt.pacer is not None and rt.pacer.next_due() is not None):
            if time.monotonic() > deadline:
                raise SystemExit("connections still held after %.0f s" % PACER_WAIT_SECONDS)
            gevent.sleep(0.05)

    def name(obj) -> str:
        kind = type(obj)
        label = f"{kind.__module__}.{kind.__qualname__}"
        if kind.__name__ in ("method", "function", "generator"):
            label += f" {obj.__qualname__}"
        return label

    results = {}
    for protocol in PROTOCOLS:
        for _ in range(WARM_UP):
            one(protocol)
        settled()
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(connections):
                one(protocol)
            settled()
            gc.collect()
        finally:
            gc.set_debug(0)
            garbage, gc.garbage[:] = list(gc.garbage), []
            gc.enable()
        ids = {id(obj) for obj in garbage}
        by_type = collections.Counter(map(name, garbage))
        result = {"per_connection": len(garbage) / connections,
                  "by_type": {k: v / connections for k, v in by_type.most_common()},
                  "alive": sum(1 for obj in gc.get_objects() if type(obj) is Connection and id(obj) not in ids)}
        if edges:
            seams = collections.Counter((name(obj), name(ref)) for obj in garbage
                                        for ref in gc.get_referents(obj) if id(ref) in ids)
            result["edges"] = [[a, b, k / connections] for (a, b), k in sorted(seams.items())]
        del garbage, ids
        gc.collect()
        results[protocol or "legacy"] = result
    return results


def report(commit: str, results: dict) -> None:
    for protocol, r in results.items():
        print(f"{commit:>10} {protocol:>9}: {r['per_connection']:.2f} objects in cycles per closed connection, "
              f"{r['alive']} closed Connection(s) still alive", flush=True)
        for kind, per in r["by_type"].items():
            print(f"{per:24.2f}  {kind}")
        for a, b, per in r.get("edges", ()):
            print(f"{per:24.2f}  {a} -> {b}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commits", nargs="+", default=["."], help="trees to measure: commits, or . for this working tree")
    ap.add_argument("--connections", type=int, default=CONNECTIONS, help="closed connections per protocol")
    ap.add_argument("--edges", action="store_true", help="also the references between the unreachable objects")
    ap.add_argument("--json", action="store_true", help="print one JSON object {commit: {protocol: result}}")
    ap.add_argument("--child", help=argparse.SUPPRESS)      # the tree one child process measures
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child), args.connections, args.edges)))
        return
    import tempfile

    sys.path.insert(0, str(ROOT / "bench"))
    from delivery_instructions import tree_of
    out = {}
    with tempfile.TemporaryDirectory(prefix="fonana-cycles-") as tmp:
        for commit in args.commits:
            tree = tree_of(commit, Path(tmp))
            run = subprocess.run([sys.executable, __file__, "--child", str(tree), "--connections",
                                  str(args.connections)] + (["--edges"] if args.edges else []),
                                 capture_output=True, text=True, timeout=600)
            if run.returncode != 0:
                raise SystemExit(f"the run for {commit} failed:\n{run.stderr[-3000:]}")
            out[commit] = json.loads(run.stdout.strip().splitlines()[-1])
            if not args.json:
                report(commit, out[commit])
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
