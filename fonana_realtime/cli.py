"""Command line: `python -m fonana_realtime token|api-key|client|seed-demo`.

- token USER_ID     print a dev token for USER_ID, signed with the configured secret
                    (JWT_SECRET / NEXTAUTH_SECRET, or the embedded default's dev secret)
- api-key           print the key of the server-to-server API (WS_API_SECRET or the dev key)
- client            the old test client, done properly: connect, subscribe, ping, try a
                    forbidden subscription, print every frame
- seed-demo         insert the demo users/posts into DATABASE_URL (a dev PostgreSQL)
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import time

from .auth import mint_token
from .settings import SettingsError, load_settings


def _settings():
    try:
        return load_settings()
    except SettingsError as exc:
        sys.exit(f"fonana-realtime: {exc}")


def cmd_token(args):
    settings = _settings()
    print(mint_token(args.user_id, settings.jwt_secrets[0], args.hours * 3600))


def cmd_api_key(args):
    settings = _settings()
    if not settings.api_secret:
        sys.exit("fonana-realtime: WS_API_SECRET is not set")
    print(settings.api_secret)


def cmd_client(args):
    from .wsclient import Client, Closed, Refused

    url = args.url
    try:
        channels = [json.loads(raw) for raw in args.channel]
    except ValueError as exc:
        sys.exit(f"fonana-realtime client: a --channel is not JSON ({exc}); e.g. "
                 """'{"type":"feed","userId":"demo-fan"}'""")
    token = args.token
    if token is None and args.user:
        token = mint_token(args.user, _settings().jwt_secrets[0], 3600)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    deadline = time.monotonic() + args.seconds
    try:
        ws = Client(url, headers=headers, timeout=10)
    except Refused as exc:
        print(json.dumps({"refused": exc.status, "body": exc.body}))
        return 1
    except (OSError, TimeoutError, Closed, ValueError) as exc:
        # One line, no traceback: what failed and what to try.
        sys.exit(f"fonana-realtime client: cannot connect to {url}: {_why(exc)}")
    with ws:
        def show(timeout):
            try:
                frame = ws.recv(timeout=timeout)
            except TimeoutError:
                return False
            print(frame, flush=True)
            return True

        try:
            show(5)                                             # connected
            for channel in channels:
                ws.send_text(json.dumps({"type": "subscribe", "channel": channel}))
                show(5)
            ws.send_text(json.dumps({"type": "ping"}))
            if not args.no_probe:
                # A channel nobody else may hold: the server must refuse it with access_denied.
                ws.send_text(json.dumps({"type": "subscribe",
                                         "channel": {"type": "notifications", "userId": "someone-else"}}))
            while time.monotonic() < deadline:
                show(max(0.05, deadline - time.monotonic()))
        except Closed as exc:
            print(json.dumps({"closed": exc.code}))
        except OSError as exc:
            sys.exit(f"fonana-realtime client: connection to {url} lost: {_why(exc)}")
    return 0


def _why(exc) -> str:
    from .wsclient import Closed
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running? `make run` starts it)"
    if isinstance(exc, TimeoutError):
        return "no answer within 10 s"
    if isinstance(exc, Closed):
        return "the server ended the connection during the handshake"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def cmd_seed_demo(args):
    from .store import open_store
    from .store.demo import seed_demo
    settings = _settings()
    store = open_store(settings.database_url, settings.data_dir)
    seed_demo(store)
    print("demo rows written")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fonana_realtime")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("token", help="mint a dev token for a user")
    p.add_argument("user_id")
    p.add_argument("--hours", type=int, default=24 * 7)
    p.set_defaults(func=cmd_token)
    p = sub.add_parser("api-key", help="print the server-to-server API key")
    p.set_defaults(func=cmd_api_key)
    p = sub.add_parser("client", help="connect, subscribe and print every frame")
    p.add_argument("--url", default="ws://127.0.0.1:3002/ws")
    p.add_argument("--token", help="a JWT (default: mint one for --user)")
    p.add_argument("--user", default="demo-fan", help="mint a token for this user (default demo-fan)")
    p.add_argument("--channel", action="append", default=[], help='channel object, JSON; repeatable')
    p.add_argument("--seconds", type=float, default=30.0, help="exit after this long")
    p.add_argument("--no-probe", action="store_true", help="skip the forbidden-subscription probe")
    p.set_defaults(func=cmd_client)
    p = sub.add_parser("seed-demo", help="write the demo rows into DATABASE_URL")
    p.set_defaults(func=cmd_seed_demo)
    args = parser.parse_args(argv)
    return args.func(args) or 0
