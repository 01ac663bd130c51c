"""Structured logs without tokens or secrets (issue 4, point 12; PROTOCOL.md section 1).

* A direct test: one server sees a token in the query string, one in the Authorization
  header, an in-band `auth` with a bad token, refused handshakes carrying tokens, and API
  calls with right and wrong keys; afterwards no log file of it holds any of them (whole,
  or the signature/payload part), every line is a JSON object with the agreed fields,
  and gunicorn's access lines show `/ws` without its query string.
* A suite-wide scan, run last (tests/support/log_scan.py moves it there): every log line
  that any server or nginx wrote during this whole pytest run.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from support.waiting import wait_until
from support.tokens import make_token
from support.ws import open_ws, refused_handshake

# The plugin that remembers every server and moves the suite-wide scan to the end. Its
# functions are imported inside the tests, after pytest has loaded it as a plugin.
pytest_plugins = ["support.log_scan"]

REQUIRED = ("time", "level", "event", "pid")


def _json_lines(path: Path) -> list[dict]:
    out = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name}:{n} is not a JSON object: {line[:200]!r}") from None
        assert isinstance(rec, dict), f"{path.name}:{n} is not a JSON object: {line[:200]!r}"
        missing = [k for k in REQUIRED if k not in rec]
        assert not missing, f"{path.name}:{n} lacks {missing}: {line[:300]!r}"
        out.append(rec)
    return out


def _parts(token: str) -> list[str]:
    """The token and, for a JWT, its payload and signature parts (each long enough to be unique)."""
    parts = [token]
    if token.count(".") == 2:
        _, payload, signature = token.split(".")
        parts += [p for p in (payload, signature) if len(p) >= 16]
    return parts


@pytest.mark.postgres
def test_tokens_and_keys_stay_out_of_the_logs(server_factory, pg_url, seed):
    # LOG_LEVEL=debug: every line the server can write is scanned, and `disconnected`
    # (debug) tells when a client's last line is out.
    srv = server_factory.start("log-secrets", database_url=pg_url, env={"LOG_LEVEL": "debug"})
    user = seed.user()
    stranger = "u-nobody-" + secrets.token_hex(6)

    in_query = srv.token(user)
    in_header = srv.token(user, exp_in=1800)
    refreshed = srv.token(user, exp_in=7200)
    wrong_signature = make_token("wrong-secret-" + secrets.token_urlsafe(16), user)
    expired = srv.token(user, exp_in=-3600)
    unknown_user = srv.token(stranger)
    not_a_jwt = "opaque-" + secrets.token_urlsafe(24)
    wrong_key = "wrong-api-key-" + secrets.token_urlsafe(16)
    tokens = {"query token": in_query, "header token": in_header, "refresh token": refreshed,
              "bad-signature token": wrong_signature, "expired token": expired,
              "unknown-user token": unknown_user, "opaque token": not_a_jwt}

    # accepted: query string (as the browser does) and Authorization header
    c_query = srv.connect(user, token=in_query)
    c_header = open_ws(srv.ws_url, headers={"Authorization": f"Bearer {in_header}"})
    srv.clients.append(c_header)
    assert c_header.welcome["data"]["userId"] == user
    # in-band refresh: a bad token, then a good one
    c_query.send_json({"type": "auth", "token": wrong_signature})
    c_query.expect_error("invalid_token")
    c_query.send_json({"type": "auth", "token": refreshed})
    c_query.expect_type("authenticated")

    # refused before the upgrade, each carrying its token in the query or the header
    for url, headers, status, reason in (
            (srv.url(expired), None, 401, "expired_token"),
            (srv.url(wrong_signature), None, 401, "invalid_token"),
            (srv.url(not_a_jwt), None, 401, "invalid_token"),
            (srv.ws_url, {"Authorization": f"Bearer {unknown_user}"}, 401, "unknown_user"),
            (srv.url(expired, path="/"), None, 401, "expired_token")):
        refusal = refused_handshake(url, headers=headers)
        assert (refusal.status, refusal.json().get("reason")) == (status, reason), (refusal.status, refusal.body)
    # a plain GET of /ws?token=... (no upgrade) is a client error, and logged as such
    r = srv.get("/ws?token=" + in_query)
    assert 400 <= r.status_code < 500, r.status_code
    # the API with a wrong key and with the right one
    assert srv.api("/api/events", {"event": {"type": "notifications_cleared", "userId": user}},
                   key=wrong_key).status_code == 401
    srv.publish({"event": {"type": "notifications_cleared", "userId": user}})
    c_query.expect_type("notifications_cleared")

    ids = {c_query.welcome["data"]["connectionId"], c_header.welcome["data"]["connectionId"]}
    srv.close_clients()

    combined = srv.log_dir / "ws-combined.log"

    def all_logged():
        recs = _json_lines(combined)
        gone = {r.get("conn_id") for r in recs if r.get("event") == "disconnected"}
        refused = [r for r in recs if r.get("event") == "auth_failed"]
        api_401 = [r for r in recs if r.get("logger") == "gunicorn.access" and "/api/events" in r["message"]
                   and '" 401 ' in r["message"]]
        return recs if ids <= gone and len(refused) >= 5 and api_401 else None
    records = wait_until(all_logged, 10, "the disconnects, refusals and API calls in ws-combined.log")

    # -- structure: one JSON object per line, with the agreed fields ---------------------
    files = [srv.log_dir / n for n in ("ws-out.log", "ws-error.log", "ws-combined.log")]
    for f in files:
        assert f.is_file(), f"{f.name} missing from LOG_DIR"
    out_recs = _json_lines(files[0])
    err_recs = _json_lines(files[1])
    stdout_recs = _json_lines(srv.stdout_path)
    assert out_recs and all(r["level"] in ("info", "warning", "error", "critical") for r in out_recs)
    assert all(r["level"] in ("error", "critical") for r in err_recs), err_recs
    assert any(r.get("event") == "connected" for r in stdout_recs), "stdout lacks the JSON log lines"
    connected = [r for r in records if r.get("event") == "connected"]
    assert {r.get("conn_id") for r in connected} >= ids, connected
    for r in connected:
        assert r.get("user_id") == user and isinstance(r.get("pid"), int) and r.get("ip"), r
    reasons = {r.get("reason") for r in records if r.get("event") == "auth_failed"}
    assert {"expired_token", "invalid_token", "unknown_user"} <= reasons, reasons

    # -- gunicorn's access log: the path, never the query string -------------------------
    access = [r["message"] for r in records if r.get("logger") == "gunicorn.access"]
    ws_access = [m for m in access if '"GET /ws' in m or '"GET / ' in m]
    assert ws_access, access
    for m in ws_access:
        assert "?" not in m, f"a query string in the access log: {m}"

    # -- nothing secret, anywhere this server wrote ----------------------------------------
    needles = {"JWT_SECRET": srv.jwt_secret, "WS_API_SECRET": srv.api_key, "wrong API key": wrong_key}
    for label, token in tokens.items():
        for i, part in enumerate(_parts(token)):
            needles[f"{label}{' (part)' if i else ''}"] = part
    for path in [srv.stdout_path, srv.stderr_path, *sorted(srv.log_dir.iterdir())]:
        text = path.read_text(errors="replace")
        for label, value in needles.items():
            assert value not in text, f"the {label} appears in {path.name}"
        assert "token=" not in text.replace("token=[redacted]", ""), f"a token= value in {path.name}"


def test_no_log_line_of_the_whole_suite_holds_a_token_or_secret(tmp_path_factory):
    """Runs last (see tests/support/log_scan.py): every log the suite produced so far."""
    from support.log_scan import SCAN_TEST_NAME, mark_scan_ran, scan, servers_seen
    assert SCAN_TEST_NAME == test_no_log_line_of_the_whole_suite_holds_a_token_or_secret.__name__
    basetemp = tmp_path_factory.getbasetemp()
    mark_scan_ran(basetemp)
    leaks = scan(basetemp)
    assert not leaks, f"{len(leaks)} log line(s) hold a token or a secret:\n" + "\n".join(leaks[:40])
    if servers_seen() == 0:
        pytest.skip("no server ran in this session: nothing to scan")
