"""The embedded default (no DATABASE_URL): a SQLite file in DATA_DIR, seeded with demo data,
and the development conveniences around secrets (PROTOCOL.md section 1)."""
import sqlite3

import jwt
import pytest

from support.cli import run_cli
from support.server import ServerFactory
from support.tokens import make_token
from support.ws import open_ws, refused_handshake

DENIED = "Access denied to channel"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory)
    srv = factory.start("embedded", database_url=None)
    yield srv
    factory.stop_all()


def test_creates_the_sqlite_file_with_the_tables(embedded):
    path = embedded.data_dir / "fonana.sqlite3"
    assert path.is_file(), sorted(p.name for p in embedded.data_dir.iterdir())
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"users", "posts", "subscriptions", "post_purchases", "notifications"} <= tables, tables
        users = {r[0] for r in db.execute('SELECT "id" FROM "users"')}
    assert {"demo-creator", "demo-fan", "demo-stranger"} <= users, users


def test_ready_with_the_embedded_store(embedded):
    assert embedded.get("/ready").status_code == 200


@pytest.mark.parametrize("user", ["demo-creator", "demo-fan", "demo-stranger"])
def test_demo_users_connect(embedded, user):
    ws = embedded.connect(user)
    assert ws.welcome["data"]["userId"] == user
    ws.ping()


def test_unknown_user_is_refused(embedded):
    r = refused_handshake(embedded.url(embedded.token("not-a-demo-user")))
    assert r.status == 401 and r.json().get("reason") == "unknown_user", (r.status, r.body)


@pytest.mark.parametrize("user,post,allowed", [
    ("demo-creator", "demo-open-post", True),
    ("demo-creator", "demo-locked-post", True),
    ("demo-creator", "demo-paid-post", True),
    ("demo-fan", "demo-open-post", True),
    ("demo-fan", "demo-locked-post", True),      # subscription demo-fan -> demo-creator
    ("demo-stranger", "demo-open-post", True),
    ("demo-stranger", "demo-locked-post", False),
    ("demo-stranger", "demo-paid-post", True),   # completed purchase
    ("demo-stranger", "no-such-post", False),
    ("demo-fan", "no-such-post", False),
])
def test_demo_access_rules(embedded, user, post, allowed):
    ws = embedded.connect(user)
    channel = {"type": "post", "postId": post}
    if allowed:
        ws.subscribe(channel, key=f"post_{post}")
    else:
        ws.subscribe_denied(channel)
    ws.barrier()


def test_demo_fan_has_two_unread_notifications(embedded):
    ws = embedded.connect("demo-fan")
    ws.subscribe({"type": "notifications", "userId": "demo-fan"}, key="notifications_demo-fan")
    data = ws.unread["data"]
    assert (data["count"], data["total"]) == (2, 2), data
    assert len(data["notifications"]) == 2
    assert all(n["userId"] == "demo-fan" and n["isRead"] is False for n in data["notifications"])
    stamps = [n["createdAt"] for n in data["notifications"]]
    assert stamps == sorted(stamps, reverse=True), stamps


def test_demo_fan_cannot_read_the_creators_notifications(embedded):
    ws = embedded.connect("demo-fan")
    ws.subscribe_denied({"type": "notifications", "userId": "demo-creator"})
    ws.barrier()


def test_events_and_notifications_api_on_the_embedded_store(embedded):
    stranger = embedded.connect("demo-stranger")
    post_watcher = embedded.connect("demo-fan")
    post_watcher.subscribe({"type": "post", "postId": "demo-locked-post"})
    event = {"type": "post_liked", "postId": "demo-locked-post", "userId": "demo-fan", "likesCount": 3}
    embedded.publish({"event": event})
    post_watcher.expect_event(event)
    stranger.barrier()

    r = embedded.api("/api/notifications", {"userId": "demo-stranger", "type": "POST_PURCHASE",
                                            "title": "Bought", "message": "You bought it", "metadata": {"x": 1}})
    assert r.status_code == 201, (r.status_code, r.text[:500])
    row = r.json()
    stranger.expect_event({"type": "notification", "userId": "demo-stranger", "notification": row})
    with sqlite3.connect(f"file:{embedded.data_dir / 'fonana.sqlite3'}?mode=ro", uri=True) as db:
        assert db.execute('SELECT count(*) FROM "notifications" WHERE "id" = ?', (row["id"],)).fetchone()[0] == 1

    r = embedded.api("/api/notifications/read", {"userId": "demo-stranger", "notificationId": row["id"]})
    assert r.status_code == 200, (r.status_code, r.text[:500])
    stranger.expect_event({"type": "notification_read", "userId": "demo-stranger", "notificationId": row["id"]})
    r = embedded.api("/api/notifications/read", {"userId": "demo-fan", "notificationId": row["id"]})
    assert r.status_code == 404 and r.json() == {"error": "not_found"}, (r.status_code, r.text[:300])

    r = embedded.api("/api/notifications", {"userId": "demo-stranger", "type": "NEW_MESSAGE", "title": "t",
                                            "message": "m"})
    assert r.status_code == 201
    stranger.expect_type("notification")
    r = embedded.api("/api/notifications/clear", {"userId": "demo-stranger"})
    assert r.status_code == 200 and r.json() == {"cleared": 1}, (r.status_code, r.text[:300])
    stranger.expect_event({"type": "notifications_cleared", "userId": "demo-stranger"})
    stranger.barrier()


def test_data_survives_a_restart_and_is_not_seeded_twice(server_factory):
    first = server_factory.start("embedded-restart", database_url=None)
    r = first.api("/api/notifications", {"userId": "demo-fan", "type": "NEW_MESSAGE", "title": "kept",
                                         "message": "across restarts"})
    assert r.status_code == 201, (r.status_code, r.text[:300])
    assert first.stop() == 0
    second = server_factory.create("embedded-restart-2", database_url=None, jwt_secret=first.jwt_secret,
                                   api_key=first.api_key)
    second.data_dir = first.data_dir
    second.env["DATA_DIR"] = str(first.data_dir)
    second.start()
    ws = second.connect("demo-fan")
    ws.subscribe({"type": "notifications", "userId": "demo-fan"})
    data = ws.unread["data"]
    assert data["total"] == 3, data
    assert data["notifications"][0]["id"] == r.json()["id"]


# -- secrets in embedded mode ------------------------------------------------------------------

def test_embedded_without_any_secret_starts_and_cli_token_is_accepted(server_factory):
    srv = server_factory.start("embedded-nosecret", database_url=None, jwt_secret=None, api_key=None)
    minted = run_cli(["token", "demo-fan"], env={"DATA_DIR": srv.data_dir})
    assert minted.returncode == 0, (minted.returncode, minted.stdout, minted.stderr)
    token = minted.stdout.strip().splitlines()[-1].strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims.get("userId") == "demo-fan" and "exp" in claims, claims
    with open_ws(srv.url(token)) as ws:
        assert ws.welcome["data"]["userId"] == "demo-fan"
        ws.ping()
    # the dev secret is really a secret: a token under another key is refused
    r = refused_handshake(srv.url(make_token("guessed-secret-" + "g" * 20, "demo-fan")))
    assert r.status == 401 and r.json().get("reason") == "invalid_token", (r.status, r.body)


def test_embedded_without_any_secret_cli_api_key_is_the_dev_key(server_factory):
    srv = server_factory.start("embedded-devkey", database_url=None, jwt_secret=None, api_key=None)
    out = run_cli(["api-key"], env={"DATA_DIR": srv.data_dir})
    assert out.returncode == 0, (out.stdout, out.stderr)
    key = out.stdout.strip().splitlines()[-1].strip()
    ws = srv.connect("demo-fan", token=run_cli(["token", "demo-fan"], env={"DATA_DIR": srv.data_dir}
                                               ).stdout.strip().splitlines()[-1].strip())
    event = {"type": "feed_update", "userId": "demo-fan", "posts": []}
    r = srv.api("/api/events", {"event": event}, key=key)
    assert r.status_code == 202, (r.status_code, r.text[:300])
    ws.expect_event(event)
    assert srv.api("/api/events", {"event": event}, key="not-the-dev-key").status_code == 401


@pytest.mark.postgres
def test_postgres_without_any_secret_refuses_to_start(server_factory, pg_url):
    srv = server_factory.create("pg-nosecret", database_url=pg_url, jwt_secret=None)
    srv.start(wait=False)
    rc = srv.wait_exit(45)
    out = srv.output()
    assert rc is not None, "the server is still running without JWT_SECRET/NEXTAUTH_SECRET:\n" + srv.output_tail()
    assert rc != 0, f"exit code 0 without a secret:\n{out[-2000:]}"
    reasons = [l for l in out.splitlines() if "JWT_SECRET" in l or "NEXTAUTH_SECRET" in l]
    assert reasons, f"no line names JWT_SECRET/NEXTAUTH_SECRET:\n{out[-2000:]}"
    assert "Traceback" not in out, f"a traceback instead of a one-line reason:\n{out[-3000:]}"


# -- .env files (PROTOCOL.md section 1) --------------------------------------------------------

def test_dotenv_files_in_the_working_directory_and_its_parent(server_factory, tmp_path):
    """Priority, lowest first: ../.env, ./.env, the real environment."""
    parent = tmp_path / "deploy"
    workdir = parent / "app"
    workdir.mkdir(parents=True)
    (parent / ".env").write_text(
        "JWT_SECRET=parent-secret-0123456789abcdef0123\n"
        "WS_API_SECRET=parent-api-key-0123456789abcdef\n"
        "ALLOWED_ORIGINS=https://parent.example\n"
    )
    (workdir / ".env").write_text("JWT_SECRET=app-secret-0123456789abcdef0123456\n")
    srv = server_factory.create("dotenv", database_url=None, jwt_secret=None, api_key=None, cwd=workdir,
                                env={"ALLOWED_ORIGINS": "https://real.example"})
    srv.start()
    srv.jwt_secret = "app-secret-0123456789abcdef0123456"

    with open_ws(srv.url(srv.token("demo-fan"))) as ws:                  # ./.env over ../.env
        assert ws.welcome["data"]["userId"] == "demo-fan"
    r = refused_handshake(srv.url(make_token("parent-secret-0123456789abcdef0123", "demo-fan")))
    assert r.status == 401 and r.json().get("reason") == "invalid_token", (r.status, r.body)

    r = srv.api("/api/events", {"event": {"type": "feed_update", "userId": "demo-fan", "posts": []}},
                key="parent-api-key-0123456789abcdef")                 # from ../.env
    assert r.status_code == 202, (r.status_code, r.text[:300])

    with open_ws(srv.url(srv.token("demo-fan")), origin="https://real.example") as ws:  # real env wins
        ws.ping()
    r = refused_handshake(srv.url(srv.token("demo-fan")), origin="https://parent.example")
    assert r.status == 403, (r.status, r.body)
