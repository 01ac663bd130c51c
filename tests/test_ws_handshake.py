"""The WebSocket handshake: token sources, claims, every refusal, Origin, welcome frame.

PROTOCOL.md 2.1 and the welcome row of 2.2. Refusals must happen before the upgrade:
HTTP 401 + JSON `{"error":"unauthorized","reason":...}`, 403 for a foreign Origin.
"""
import base64
import hashlib
import hmac
import json
import os
import time

import pytest
import requests

from support.rawws import RawWebSocket
from support.tokens import forged_token, make_token, valid_payload
from support.ws import WELCOME_MESSAGE, open_ws, refused_handshake

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def user(seed):
    return seed.user()


def assert_unauthorized(refusal, reason):
    assert refusal.status == 401, f"expected 401 {reason}, got HTTP {refusal.status} {refusal.body[:300]!r}"
    assert "application/json" in refusal.headers.get("content-type", ""), refusal.headers
    body = refusal.json()
    assert body.get("error") == "unauthorized", body
    if isinstance(reason, (set, frozenset)):
        assert body.get("reason") in reason, body
    else:
        assert body.get("reason") == reason, body


def assert_welcome(frame, user_id):
    assert frame["type"] == "connected", frame
    assert isinstance(frame.get("data"), dict), frame
    assert frame["data"].get("userId") == user_id, frame
    assert frame["data"].get("message") == WELCOME_MESSAGE, frame


# -- accepted ------------------------------------------------------------------------------

def test_token_in_query_connects_and_welcome_is_the_first_frame(server, user):
    ws = server.connect(welcome=False, token=server.token(user))
    frame = ws.recv_json()
    assert_welcome(frame, user)
    ws.ping()


def test_token_in_query_is_percent_decoded(server, user):
    token = server.token(user)
    encoded = "".join(f"%{b:02X}" for b in token.encode())  # every character percent-encoded
    with open_ws(f"{server.ws_url}?token={encoded}") as ws:
        assert_welcome(ws.welcome, user)


def test_token_in_query_is_percent_decoded_only_once(server, user):
    token = server.token(user)
    twice = "".join(f"%25{b:02X}" for b in token.encode())  # decoded once: "%65%79..." is no JWT
    assert_unauthorized(refused_handshake(f"{server.ws_url}?token={twice}"), "invalid_token")


def test_empty_token_parameter_is_a_missing_token(server):
    assert_unauthorized(refused_handshake(server.ws_url + "?token="), "missing_token")


def test_token_in_authorization_bearer_header(server, user):
    with open_ws(server.ws_url, headers={"Authorization": f"Bearer {server.token(user)}"}) as ws:
        assert_welcome(ws.welcome, user)
        ws.ping()


def test_root_path_upgrades_like_ws(server, user):
    with open_ws(server.url(server.token(user), path="/")) as ws:
        assert_welcome(ws.welcome, user)
        ws.ping()


def test_root_path_with_authorization_header(server, user):
    url = f"ws://{server.host}:{server.port}/"
    with open_ws(url, headers={"Authorization": f"Bearer {server.token(user)}"}) as ws:
        assert_welcome(ws.welcome, user)


def test_root_path_refuses_without_token(server):
    assert_unauthorized(refused_handshake(f"ws://{server.host}:{server.port}/"), "missing_token")


def test_sub_claim_is_the_fallback_user_id(server, user):
    token = make_token(server.jwt_secret, None, sub=user)
    with open_ws(server.url(token)) as ws:
        assert_welcome(ws.welcome, user)


def test_userId_claim_wins_over_sub(server, seed, user):
    other = seed.user()
    token = make_token(server.jwt_secret, user, sub=other)
    with open_ws(server.url(token)) as ws:
        assert_welcome(ws.welcome, user)


def test_query_token_is_used_before_the_header(server, seed, user):
    token = server.token(user)
    with open_ws(server.url(token), headers={"Authorization": "Bearer not-a-token"}) as ws:
        assert_welcome(ws.welcome, user)


def test_invalid_query_token_is_not_rescued_by_the_header(server, user):
    r = refused_handshake(server.url("not-a-jwt"), headers={"Authorization": f"Bearer {server.token(user)}"})
    assert_unauthorized(r, "invalid_token")


def test_extra_claims_are_ignored(server, user):
    token = server.token(user, iss="https://fonana.me", aud="fonana", wallet="abc", nbf=int(time.time()) - 5)
    with open_ws(server.url(token)) as ws:
        assert_welcome(ws.welcome, user)


def test_several_connections_of_one_user_each_get_a_welcome(server, user):
    a = server.connect(user)
    b = server.connect(user)
    a.ping()
    b.ping()


# -- refused: 401 before the upgrade ----------------------------------------------------------

def test_missing_token(server):
    assert_unauthorized(refused_handshake(server.ws_url), "missing_token")


def test_missing_token_with_other_query_parameters(server):
    assert_unauthorized(refused_handshake(server.ws_url + "?foo=bar"), "missing_token")


def test_authorization_header_without_bearer_scheme_is_not_a_token(server, user):
    r = refused_handshake(server.ws_url, headers={"Authorization": f"Basic {base64.b64encode(b'a:b').decode()}"})
    assert_unauthorized(r, "missing_token")


def _hs(secret: str, header: dict, payload: dict, digest) -> str:
    def b64(d):
        return base64.urlsafe_b64encode(d).rstrip(b"=").decode()
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    sig = hmac.new(secret.encode(), signing.encode(), digest).digest()
    return signing + "." + b64(sig)


INVALID_TOKENS = {
    "garbage": lambda s, u: "not-a-jwt",
    "three_garbage_segments": lambda s, u: "aaa.bbb.ccc",
    "wrong_secret": lambda s, u: make_token("some-other-secret-" + "z" * 20, u),
    "tampered_payload": lambda s, u: _tamper(make_token(s, u)),
    "alg_none": lambda s, u: forged_token({"alg": "none", "typ": "JWT"}, valid_payload(u)),
    "alg_None_mixed_case": lambda s, u: forged_token({"alg": "None", "typ": "JWT"}, valid_payload(u)),
    "alg_HS512_right_secret": lambda s, u: _hs(s, {"alg": "HS512", "typ": "JWT"}, valid_payload(u), hashlib.sha512),
    "alg_HS384_right_secret": lambda s, u: _hs(s, {"alg": "HS384", "typ": "JWT"}, valid_payload(u), hashlib.sha384),
    "alg_RS256": lambda s, u: forged_token({"alg": "RS256", "typ": "JWT"}, valid_payload(u), os.urandom(256)),
    "alg_ES256": lambda s, u: forged_token({"alg": "ES256", "typ": "JWT"}, valid_payload(u), os.urandom(64)),
    "no_exp": lambda s, u: make_token(s, u, exp_in=None),
    "exp_not_a_number": lambda s, u: _hs(s, {"alg": "HS256", "typ": "JWT"},
                                         {"userId": u, "exp": "tomorrow"}, hashlib.sha256),
    "signature_stripped": lambda s, u: make_token(s, u).rsplit(".", 1)[0] + ".",
}


def _tamper(token: str) -> str:
    header, payload, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["userId"] = data["userId"] + "x"
    new = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return ".".join((header, new, sig))


@pytest.mark.parametrize("kind", sorted(INVALID_TOKENS))
def test_invalid_token_in_query(server, user, kind):
    token = INVALID_TOKENS[kind](server.jwt_secret, user)
    assert_unauthorized(refused_handshake(server.url(token)), "invalid_token")


@pytest.mark.parametrize("kind", ["garbage", "wrong_secret", "alg_none", "no_exp"])
def test_invalid_token_in_header(server, user, kind):
    token = INVALID_TOKENS[kind](server.jwt_secret, user)
    r = refused_handshake(server.ws_url, headers={"Authorization": f"Bearer {token}"})
    assert_unauthorized(r, "invalid_token")


def test_hs256_token_with_neither_userId_nor_sub(server):
    token = make_token(server.jwt_secret, None)
    assert_unauthorized(refused_handshake(server.url(token)), {"invalid_token", "unknown_user"})


@pytest.mark.parametrize("age", [45, 120, 86400])  # leeway is at most 30 s
def test_expired_token(server, user, age):
    token = server.token(user, exp_in=-age)
    assert_unauthorized(refused_handshake(server.url(token)), "expired_token")


def test_expired_token_in_header(server, user):
    token = server.token(user, exp_in=-600)
    r = refused_handshake(server.ws_url, headers={"Authorization": f"Bearer {token}"})
    assert_unauthorized(r, "expired_token")


def test_unknown_user(server):
    token = server.token("no-such-user-" + os.urandom(6).hex())
    assert_unauthorized(refused_handshake(server.url(token)), "unknown_user")


def test_unknown_user_through_sub(server):
    token = make_token(server.jwt_secret, None, sub="no-such-user-" + os.urandom(6).hex())
    assert_unauthorized(refused_handshake(server.url(token)), "unknown_user")


def test_deleted_user_cannot_connect(server, seed):
    uid = seed.user()
    seed.execute('DELETE FROM "users" WHERE "id" = %s', (uid,))
    assert_unauthorized(refused_handshake(server.url(server.token(uid))), "unknown_user")


def test_refusal_is_plain_http_before_upgrade(server, user):
    """The same refusal seen by a raw HTTP client: a 401 JSON response, no 101, no Upgrade header."""
    s = requests.Session()
    s.trust_env = False
    headers = {
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    r = s.get(server.url(server.token(user, exp_in=-600)).replace("ws://", "http://"), headers=headers, timeout=10)
    assert r.status_code == 401, (r.status_code, r.text[:300])
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert body.get("error") == "unauthorized" and body.get("reason") == "expired_token", body
    assert "sec-websocket-accept" not in {k.lower() for k in r.headers}


# -- JWT_SECRET and NEXTAUTH_SECRET both set (alt_server) ---------------------------------------

def test_token_signed_with_jwt_secret_is_accepted_when_both_are_set(alt_server, user):
    with open_ws(alt_server.url(make_token(alt_server.jwt_secret, user))) as ws:
        assert_welcome(ws.welcome, user)


def test_token_signed_with_nextauth_secret_is_accepted_when_both_are_set(alt_server, user):
    with open_ws(alt_server.url(make_token(alt_server.nextauth_secret, user))) as ws:
        assert_welcome(ws.welcome, user)


def test_token_signed_with_a_third_secret_is_refused_when_both_are_set(alt_server, user):
    token = make_token("third-secret-" + "q" * 24, user)
    assert_unauthorized(refused_handshake(alt_server.url(token)), "invalid_token")


def test_startup_warns_when_the_two_secrets_differ(alt_server):
    lines = [l for l in alt_server.output().splitlines() if "warn" in l.lower() and "secret" in l.lower()]
    assert lines, "no start-up warning mentioning the differing secrets:\n" + alt_server.output_tail()


# -- Origin -------------------------------------------------------------------------------------

def test_foreign_origin_is_refused_with_403(alt_server, user):
    r = refused_handshake(alt_server.url(make_token(alt_server.jwt_secret, user)), origin="https://evil.example")
    assert r.status == 403, (r.status, r.body[:300])


def test_origin_matching_only_by_prefix_is_refused(alt_server, user):
    r = refused_handshake(alt_server.url(make_token(alt_server.jwt_secret, user)),
                          origin="https://fonana.me.evil.example")
    assert r.status == 403, (r.status, r.body[:300])


@pytest.mark.parametrize("origin", ["https://fonana.me", "https://app.fonana.me"])
def test_allowed_origin_connects(alt_server, user, origin):
    with open_ws(alt_server.url(make_token(alt_server.jwt_secret, user)), origin=origin) as ws:
        assert_welcome(ws.welcome, user)
        ws.ping()


def test_no_origin_header_is_not_a_browser_and_connects(alt_server, user):
    with open_ws(alt_server.url(make_token(alt_server.jwt_secret, user))) as ws:
        assert_welcome(ws.welcome, user)


def test_any_origin_connects_when_allowed_origins_is_unset(server, user):
    with open_ws(server.url(server.token(user)), origin="https://anything.example") as ws:
        assert_welcome(ws.welcome, user)


def test_allowed_origins_star_allows_every_origin(server_factory):
    srv = server_factory.start("origins-star", database_url=None, env={"ALLOWED_ORIGINS": "*"})
    for origin in ("https://anything.example", "http://localhost:3000"):
        with open_ws(srv.url(srv.token("demo-fan")), origin=origin) as ws:
            assert_welcome(ws.welcome, "demo-fan")


# -- no log line contains a token, a secret or the /ws query string (section 1) ------------------

def test_logs_never_contain_tokens_secrets_or_the_ws_query(server_factory, pg_url, seed):
    uid = seed.user()
    srv = server_factory.start("log-probe", database_url=pg_url, nextauth_secret="nextauth-log-" + "n" * 20)
    tokens = [
        srv.token(uid),                                   # accepted
        srv.token(uid, exp_in=-600),                      # expired
        make_token("wrong-secret-" + "w" * 20, uid),      # bad signature
        srv.token("no-such-user-" + os.urandom(4).hex()),  # unknown user
        make_token(srv.nextauth_secret, uid),             # accepted under NEXTAUTH_SECRET
    ]
    with open_ws(srv.url(tokens[0])) as ws:
        ws.ping()
    with open_ws(srv.url(tokens[4])) as ws:
        ws.ping()
    for t in tokens[1:4]:
        refused_handshake(srv.url(t))
    refused_handshake(srv.ws_url, headers={"Authorization": f"Bearer {tokens[2]}"})
    srv.api("/api/events", {"event": {"type": "feed_update", "userId": uid, "posts": []}})
    srv.api("/api/events", {"event": {"type": "feed_update", "userId": uid, "posts": []}}, key="wrong-key")
    srv.stop()
    text = srv.output()
    assert text.strip(), "the server wrote no logs at all"
    for i, t in enumerate(tokens):
        assert t not in text, f"token #{i} appears in the logs"
        assert t.rsplit(".", 1)[1] not in text, f"the signature of token #{i} appears in the logs"
    for name, secret in (("JWT_SECRET", srv.jwt_secret), ("NEXTAUTH_SECRET", srv.nextauth_secret),
                         ("WS_API_SECRET", srv.api_key)):
        assert secret not in text, f"{name} appears in the logs"
    assert "token=" not in text, "the /ws query string appears in the logs"
    log_files = sorted(p.name for p in srv.log_dir.iterdir())
    for name in ("ws-out.log", "ws-error.log", "ws-combined.log"):
        assert name in log_files, f"{name} missing from LOG_DIR: {log_files}"


# -- the upgrade itself: subprotocol negotiation, malformed handshakes (web/upgrade.py) --------

def test_fonana_v2_subprotocol_is_selected_when_offered(server, user):
    client = open_ws(server.url(server.token(user)), subprotocols=["fonana.v2"])
    try:
        assert client.conn.subprotocol == "fonana.v2"
        assert client.conn.response.headers.get("Sec-WebSocket-Protocol") == "fonana.v2"
        assert_welcome(client.welcome, user)
    finally:
        client.close()


def test_fonana_v2_is_selected_from_a_list_of_offers(server, user):
    raw = RawWebSocket(server.host, server.port, f"/ws?token={server.token(user)}",
                       headers={"Sec-WebSocket-Protocol": "chat, fonana.v2, superchat"})
    try:
        assert raw.headers.get("sec-websocket-protocol") == "fonana.v2", raw.headers
        assert_welcome(raw.recv_json_until("connected"), user)
    finally:
        raw.sock.close()


@pytest.mark.parametrize("offer", [None, "chat", "fonana.v3, Fonana.V2", "fonana.v2x"])
def test_other_subprotocols_are_not_selected(server, user, offer):
    headers = {"Sec-WebSocket-Protocol": offer} if offer else None
    raw = RawWebSocket(server.host, server.port, f"/ws?token={server.token(user)}", headers=headers)
    try:
        assert "sec-websocket-protocol" not in raw.headers, raw.headers
        assert raw.headers.get("sec-websocket-accept"), raw.headers
        assert_welcome(raw.recv_json_until("connected"), user)
    finally:
        raw.sock.close()


def test_select_subprotocol_unit():
    from fonana_realtime.web.upgrade import select_subprotocol
    assert select_subprotocol("fonana.v2") == "fonana.v2"
    assert select_subprotocol(" chat ,fonana.v2") == "fonana.v2"
    assert select_subprotocol("chat,superchat") is None
    assert select_subprotocol("") is None and select_subprotocol(None) is None


def _raw_upgrade(server, path, headers):
    s = requests.Session()
    s.trust_env = False
    return s.get(f"http://{server.host}:{server.port}{path}", headers=headers, timeout=10)


@pytest.mark.parametrize("drop,override", [
    ("Sec-WebSocket-Key", {}),
    (None, {"Sec-WebSocket-Version": "8"}),
    ("Sec-WebSocket-Version", {}),
])
def test_malformed_upgrade_with_a_valid_token_is_400_json_without_upgrading(server, user, drop, override):
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    headers.pop(drop, None)
    headers.update(override)
    r = _raw_upgrade(server, f"/ws?token={server.token(user)}", headers)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert r.json().get("error") == "bad_request", r.text[:300]
    assert "sec-websocket-accept" not in {k.lower() for k in r.headers}


def test_an_upgrade_is_routed_by_its_own_path_every_time(server, user):
    """The upgrade routes are remembered per request shape (web/websocket.Upgrades.endpoint):
    alternating paths must each keep their own answer, the first time and again."""
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    token = server.token(user)
    for _ in range(2):
        for path, status in ((f"/ws?token={token}", 400), (f"/nope?token={token}", 404),
                             (f"/?token={token}", 400), (f"/ws/nope?token={token}", 404)):
            r = _raw_upgrade(server, path, headers)     # no Sec-WebSocket-Key: ours say 400
            assert r.status_code == status, (path, r.status_code, r.text[:300])
            if status == 400:
                assert r.json().get("error") == "bad_request", r.text[:300]
        with open_ws(f"{server.ws_url}?token={token}") as ws:
            assert_welcome(ws.welcome, user)


def _raw_http(server, request: bytes) -> tuple[str, dict, bytes]:
    """One request on a fresh socket, as sent: (status line, headers, body)."""
    import socket
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}, body


@pytest.mark.parametrize("request_line", [
    b"GARBAGE\r\n", b"GET /ws?token=secret-looking-token HTTP/1.1 extra\r\n", b"GET /health HTTP/9.9\r\n",
    b"G@T /health HTTP/1.1\r\n"], ids=["no_spaces", "extra_field", "bad_version", "bad_method"])
def test_a_request_gunicorn_cannot_parse_gets_a_json_400_and_is_not_logged(server, request_line):
    """Issue 18.10: gunicorn answered these with an HTML 400 (the contract: HTTP errors are
    always JSON) and logged the request line, which may hold a token."""
    status, headers, body = _raw_http(server, request_line + b"Host: x\r\n\r\n")
    assert status.split(" ")[1] == "400", (status, body)
    assert headers.get("content-type", "").startswith("application/json"), (headers, body)
    answer = json.loads(body)
    assert answer["error"] == "bad_request" and answer["reason"], answer
    assert b"secret-looking-token" not in body
    assert server.get("/health").status_code == 200
    assert "secret-looking-token" not in server.output()


@pytest.mark.parametrize("path", ["/api/events", "/health", "/ws"])
def test_options_is_a_json_405_with_allow(server, path):
    """Issue 18.10: OPTIONS (with the key) answered 200 text/html with an empty body."""
    r = server.http.options(server.base_url + path, timeout=10,
                            headers={"Authorization": f"Bearer {server.api_key}"})
    assert r.status_code == 405, (r.status_code, r.text)
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    assert r.json()["error"] == "method_not_allowed", r.text
    assert "OPTIONS" not in r.headers.get("Allow", "") and r.headers.get("Allow"), r.headers
