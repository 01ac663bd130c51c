"""The CLI: `token` mints a dev token the server accepts, `api-key` prints the key, `client`
prints every frame it receives (PROTOCOL.md sections 1 and 2 through the project's tools)."""
import json
import time

import jwt
import pytest

from support.cli import json_objects, run_cli
from support.ws import open_ws

pytestmark = pytest.mark.postgres


def _token_from(result):
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    lines = [l.strip() for l in result.stdout.splitlines() if l.strip()]
    assert lines, f"no output: {result.stderr}"
    return lines[-1]


def test_token_is_a_jwt_the_server_accepts(server, seed):
    uid = seed.user()
    token = _token_from(run_cli(["token", uid], env={"JWT_SECRET": server.jwt_secret}))
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, server.jwt_secret, algorithms=["HS256"])
    assert claims["userId"] == uid
    assert claims["exp"] > time.time()
    with open_ws(server.url(token)) as ws:
        assert ws.welcome["data"]["userId"] == uid


def test_token_uses_nextauth_secret_when_it_is_the_only_one(seed):
    uid = seed.user()
    secret = "only-nextauth-" + "s" * 20
    token = _token_from(run_cli(["token", uid], env={"NEXTAUTH_SECRET": secret}))
    assert jwt.decode(token, secret, algorithms=["HS256"])["userId"] == uid


def test_token_prefers_jwt_secret_like_the_nextjs_signer(seed):
    uid = seed.user()
    token = _token_from(run_cli(["token", uid], env={"JWT_SECRET": "jwt-first-" + "a" * 30,
                                                     "NEXTAUTH_SECRET": "nextauth-second-" + "b" * 30}))
    assert jwt.decode(token, "jwt-first-" + "a" * 30, algorithms=["HS256"])["userId"] == uid


def test_api_key_prints_the_configured_key(server):
    out = run_cli(["api-key"], env={"WS_API_SECRET": server.api_key})
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stdout.strip().splitlines()[-1].strip() == server.api_key
    r = server.api("/api/events", {"event": {"type": "feed_update", "userId": "nobody", "posts": []}},
                   key=out.stdout.strip().splitlines()[-1].strip())
    assert r.status_code == 202, (r.status_code, r.text[:300])


def _client(server, token, channels, *extra):
    args = ["client", "--url", server.ws_url, "--token", token]
    for ch in channels:
        args += ["--channel", json.dumps(ch)]
    # --seconds counts from before the connect: the frames read after the subscribes' own
    # replies (unread_notifications, the probe's access_denied) are printed only while it
    # lasts, and on a loaded machine the connect and subscribes alone took more than 1.5 s
    result = run_cli(args + ["--seconds", "4", *extra], timeout=40)
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    frames = json_objects(result.stdout)
    assert frames and frames[0].get("type") == "connected", result.stdout[-2000:]
    return frames, result.stdout[-2000:]


def test_client_prints_connected_and_subscribed_and_denied_channels(server, seed):
    creator, viewer = seed.user(), seed.user()
    open_ch = {"type": "post", "postId": seed.post(creator)}
    locked_ch = {"type": "post", "postId": seed.post(creator, locked=True, tier="premium")}
    notif_ch = {"type": "notifications", "userId": viewer}
    frames, out = _client(server, server.token(viewer), [open_ch, locked_ch, notif_ch], "--no-probe")
    assert frames[0]["data"]["userId"] == viewer, out
    keys = [f["data"].get("channelKey") for f in frames if f.get("type") == "subscribed"]
    assert keys == [f"post_{open_ch['postId']}", f"notifications_{viewer}"], out
    errors = [f for f in frames if f.get("type") == "error"]
    assert len(errors) == 1 and errors[0]["data"].get("code") == "access_denied", out
    assert errors[0]["data"].get("channel", locked_ch) == locked_ch, out
    assert "unread_notifications" in [f.get("type") for f in frames], out


def test_client_forbidden_subscription_probe_prints_access_denied(server, seed):
    uid = seed.user()
    frames, out = _client(server, server.token(uid), [{"type": "feed", "userId": uid}])
    assert [f["data"]["channelKey"] for f in frames if f.get("type") == "subscribed"] == [f"feed_{uid}"], out
    errors = [f for f in frames if f.get("type") == "error"]
    assert [e["data"].get("code") for e in errors] == ["access_denied"], out
    assert errors[0]["data"].get("message") == "Access denied to channel", out


def test_client_receives_events_published_while_it_runs(server, seed):
    """The client keeps printing frames until --seconds runs out: an event published
    after it subscribed shows up in its output."""
    import subprocess
    import sys
    from support.server import REPO, clean_env
    uid = seed.user()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fonana_realtime", "client", "--url", server.ws_url, "--token", server.token(uid),
         "--channel", json.dumps({"type": "feed", "userId": uid}), "--seconds", "2"],
        cwd=REPO, env=clean_env({}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import threading
    watchdog = threading.Timer(40, proc.kill)  # a client that ignores --seconds must not hang the suite
    watchdog.start()
    try:
        # wait (by reading its output) until the client reports the subscription
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "subscribed" in line:
                break
        assert any("subscribed" in l for l in seen), "".join(seen) + proc.stderr.read()
        event = {"type": "feed_update", "userId": uid, "posts": [{"id": "cli-probe"}]}
        server.publish({"event": event})
        rest, err = proc.communicate(timeout=30)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert event in json_objects("".join(seen) + rest), ("".join(seen) + rest)[-2000:]
    assert proc.returncode == 0, err[-2000:]


def test_client_with_a_refused_token_exits_non_zero(server):
    result = run_cli(["client", "--url", server.ws_url, "--token", "not-a-jwt", "--seconds", "1"], timeout=40)
    assert result.returncode != 0, (result.stdout[-1000:], result.stderr[-1000:])
    assert "401" in result.stdout + result.stderr or "invalid_token" in result.stdout + result.stderr


def test_client_that_cannot_connect_says_so_in_one_line(server):
    """No traceback for a server that is not there (issue 24): one line naming the URL and
    the reason, and a non-zero exit."""
    from support.server import free_port
    url = f"ws://127.0.0.1:{free_port()}/ws"                   # nothing listens there
    result = run_cli(["client", "--url", url, "--token", server.token("nobody"), "--seconds", "1"], timeout=40)
    assert result.returncode != 0, (result.stdout, result.stderr)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert url in lines[0] and "connection refused" in lines[0], lines[0]
    assert not result.stdout.strip(), result.stdout


def test_client_with_a_channel_that_is_not_json_says_so_in_one_line():
    result = run_cli(["client", "--token", "t", "--channel", "{type: feed}", "--seconds", "1"], timeout=40)
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "--channel is not JSON" in lines[0] and "Traceback" not in result.stderr, lines
