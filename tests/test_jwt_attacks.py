"""Hostile tokens at the handshake (PROTOCOL.md 2.1: HS256 only, `exp` required).

Each is refused before the upgrade with HTTP 401 `{"error":"unauthorized","reason":
"invalid_token"}`, whether it comes in the `token` query parameter or in
`Authorization: Bearer`. A control token (the same claims, signed properly) connects,
so every refusal is about the forgery and nothing else. Oversized tokens, even those over
gunicorn's own request limits, get the same JSON 401 (never gunicorn's HTML 414/431, a
500 or an upgrade).
"""
from __future__ import annotations

import base64
import json
import os
from urllib.parse import quote

import jwt
import pytest

from support.hardening import (b64url, ec_key, ed_key, public_pem, raw_http, rsa_key, signed_token,
                               upgrade_request)
from support.tokens import forged_token, valid_payload
from support.ws import open_ws, refused_handshake

pytestmark = pytest.mark.postgres

ATTACKER_SECRET = b"attacker-secret-" + b"x" * 16


@pytest.fixture(scope="module")
def user(seed):
    return seed.user()


@pytest.fixture(scope="module")
def victim(seed):
    return seed.user()


def _rsa_jwk(key) -> dict:
    from jwt.algorithms import RSAAlgorithm
    return json.loads(RSAAlgorithm.to_jwk(key.public_key()))


def _resign_header(token: str, header: dict) -> str:
    """The same payload and signature under another header."""
    _, payload, sig = token.split(".")
    return ".".join((b64url(json.dumps(header).encode()), payload, sig))


def _swap_payload(token: str, payload: dict) -> str:
    head, _, sig = token.split(".")
    return ".".join((head, b64url(json.dumps(payload).encode()), sig))


def forgeries(server, user, victim) -> dict:
    """name → token. Every one carries a live `exp` and a real user id."""
    p = valid_payload(user)
    secret = server.jwt_secret.encode()
    good = server.token(user)
    rsa, ec = rsa_key(), ec_key()
    return {
        # unsigned
        "alg_none": forged_token({"alg": "none", "typ": "JWT"}, p),
        "alg_None": forged_token({"alg": "None", "typ": "JWT"}, p),
        "alg_NONE": forged_token({"alg": "NONE"}, p),
        "alg_none_keeping_a_real_signature": _resign_header(good, {"alg": "none", "typ": "JWT"}),
        "alg_missing": forged_token({"typ": "JWT"}, p, b"sig"),
        "hs256_without_signature": signed_token(p, secret).rsplit(".", 1)[0] + ".",
        "two_segments": signed_token(p, secret).rsplit(".", 1)[0],
        # HMAC with the wrong key
        "hs256_empty_secret": signed_token(p, b""),
        "hs256_wrong_secret": signed_token(p, ATTACKER_SECRET),
        "hs256_secret_prefix": signed_token(p, secret[:-1]),
        # HMAC with the right key but an algorithm other than HS256
        "hs384_real_secret": signed_token(p, secret, alg="HS384"),
        "hs512_real_secret": signed_token(p, secret, alg="HS512"),
        # asymmetric algorithms, attacker keys
        "rs256": jwt.encode(p, rsa, algorithm="RS256"),
        "ps256": jwt.encode(p, rsa, algorithm="PS256"),
        "es256": jwt.encode(p, ec, algorithm="ES256"),
        "eddsa": jwt.encode(p, ed_key(), algorithm="EdDSA"),
        # "alg confusion": HMAC keyed with the attacker's public key
        "hs256_keyed_with_a_public_pem": signed_token(p, public_pem(rsa)),
        # keys named or carried in the header, signed by the attacker
        "rs256_embedded_jwk": jwt.encode(p, rsa, algorithm="RS256", headers={"jwk": _rsa_jwk(rsa)}),
        "hs256_embedded_jwk_oct": signed_token(p, ATTACKER_SECRET, header={
            "jwk": {"kty": "oct", "k": b64url(ATTACKER_SECRET)}}),
        "hs256_kid_path_traversal": signed_token(p, b"", header={"kid": "../../../../../../dev/null"}),
        "hs256_kid_sql": signed_token(p, ATTACKER_SECRET, header={"kid": "x' UNION SELECT 'k"}),
        "rs256_jku": jwt.encode(p, rsa, algorithm="RS256", headers={
            "jku": "http://127.0.0.1:1/jwks.json", "kid": "attacker"}),
        "rs256_x5u": jwt.encode(p, rsa, algorithm="RS256", headers={"x5u": "http://127.0.0.1:1/cert.pem"}),
        # a real signature over other claims
        "payload_swapped_to_victim": _swap_payload(good, valid_payload(victim)),
        "payload_exp_extended": _swap_payload(server.token(user, exp_in=-3600), valid_payload(user, 86400)),
        "signature_of_another_token": good.rsplit(".", 1)[0] + "." + server.token(victim).rsplit(".", 1)[1],
        "signature_bit_flipped": good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1],
        "extra_segment": good + ".e30",
    }


GARBAGE = {
    "word": "garbage",
    "dots": "...",
    "abc": "a.b.c",
    "empty_objects": "e30.e30.e30",
    "null": "null",
    "undefined": "undefined",
    "bearer_inside": "Bearer abc",
    "unicode": "токен.🙂.ß",
    "random_b64": base64.urlsafe_b64encode(os.urandom(300)).decode(),
    "header_not_json": b64url(b"{not json") + "." + b64url(b"{}") + ".c2ln",
    "payload_not_json": b64url(b'{"alg":"HS256"}') + "." + b64url(b"\xff\xfe") + ".c2ln",
    "payload_is_a_list": b64url(b'{"alg":"HS256"}') + "." + b64url(b"[1,2]") + ".c2ln",
    "nul_bytes": "abc\x00def",
    "almost_8k": "a" * 4000,
}


def _refused_401(server, token: str, where: str):
    if where == "query":
        refusal = refused_handshake(server.url(token))
    else:
        refusal = refused_handshake(server.ws_url, headers={"Authorization": f"Bearer {token}"})
    assert refusal.status == 401, f"HTTP {refusal.status} {refusal.body[:300]!r}"
    assert "application/json" in refusal.headers.get("content-type", ""), refusal.headers
    assert refusal.json() == {"error": "unauthorized", "reason": "invalid_token"}, refusal.body


def test_control_the_properly_signed_token_connects(server, user):
    with open_ws(server.url(server.token(user))) as ws:
        assert ws.welcome["data"]["userId"] == user
    with open_ws(server.ws_url, headers={"Authorization": f"Bearer {signed_token(valid_payload(user), server.jwt_secret.encode())}"}) as ws:
        assert ws.welcome["data"]["userId"] == user


FORGERY_NAMES = [
    "alg_none", "alg_None", "alg_NONE", "alg_none_keeping_a_real_signature", "alg_missing",
    "hs256_without_signature", "two_segments", "hs256_empty_secret", "hs256_wrong_secret",
    "hs256_secret_prefix", "hs384_real_secret", "hs512_real_secret", "rs256", "ps256", "es256", "eddsa",
    "hs256_keyed_with_a_public_pem", "rs256_embedded_jwk", "hs256_embedded_jwk_oct",
    "hs256_kid_path_traversal", "hs256_kid_sql", "rs256_jku", "rs256_x5u", "payload_swapped_to_victim",
    "payload_exp_extended", "signature_of_another_token", "signature_bit_flipped", "extra_segment",
]


@pytest.mark.parametrize("where", ["query", "header"])
@pytest.mark.parametrize("name", FORGERY_NAMES)
def test_forged_token_is_refused_401_before_upgrade(server, user, victim, name, where):
    tokens = forgeries(server, user, victim)
    assert sorted(tokens) == sorted(FORGERY_NAMES)
    _refused_401(server, tokens[name], where)


def _header_safe(token: str) -> bool:
    return all(32 <= ord(c) < 127 for c in token)


@pytest.mark.parametrize("name,where", [(n, w) for n in sorted(GARBAGE) for w in ("query", "header")
                                        if w == "query" or _header_safe(GARBAGE[n])])
def test_garbage_token_is_refused_401_before_upgrade(server, name, where):
    _refused_401(server, GARBAGE[name], where)


@pytest.mark.parametrize("where", ["query", "header"])
def test_100_kb_token_is_refused_without_500_or_upgrade(server, where):
    big = base64.urlsafe_b64encode(os.urandom(75_000)).decode()
    assert len(big) >= 100_000
    if where == "query":
        request = upgrade_request(server, "/ws?token=" + quote(big, safe=""))
    else:
        request = upgrade_request(server, "/ws", {"Authorization": "Bearer " + big})
    status, answer = raw_http(server, request)
    assert status in (400, 401, 414, 431), answer[:400]
    if status == 401:
        assert b'"invalid_token"' in answer, answer[:400]
    assert server.get("/health").status_code == 200
    # since issue 8.5 the answer is the contract's JSON 401 (not gunicorn's HTML 414/431)
    _assert_json_401(status, answer)


def _assert_json_401(status, answer: bytes):
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status == 401, answer[:400]
    assert b"content-type: application/json" in head.lower(), head
    assert json.loads(body) == {"error": "unauthorized", "reason": "invalid_token"}, body[:400]


@pytest.mark.parametrize("where", ["query", "header"])
def test_a_properly_signed_token_with_a_10_kb_claim_gets_the_json_401(server, user, where):
    """Longer than auth.MAX_TOKEN_BYTES, and longer than gunicorn's 8190-byte request line
    and header field caps: refused exactly like any other token that is not ours."""
    token = server.token(user, bio="b" * 10_000)
    assert len(token) > 10_000
    if where == "query":
        request = upgrade_request(server, "/ws?token=" + quote(token, safe=""))
    else:
        request = upgrade_request(server, "/ws", {"Authorization": "Bearer " + token})
    _assert_json_401(*raw_http(server, request))
    assert server.get("/health").status_code == 200


def test_server_still_serves_after_the_attacks(server, user):
    assert server.get("/health").status_code == 200
    with open_ws(server.url(server.token(user))) as ws:
        ws.ping()
