"""A token's lifetime while connected (PROTOCOL.md 2.2 `auth`, 2.5 close 4001).

The module's server runs with WS_JWT_LEEWAY_SECONDS=0, so a token that expires 3-4 s
after it is minted is enforced then (the default leeway of 10 s is checked once,
against the session server). Time passing is observed through the server's own frames:
a witness connection holding the old token receives `token_expired`; nothing sleeps.
"""
from __future__ import annotations

import jwt
import pytest

from support.hardening import iso_ms, rsa_key, running_server
from support.tokens import forged_token, make_token, valid_payload
from support.ws import refused_handshake

pytestmark = pytest.mark.postgres

# seconds of life of a short token: exp is 3-4 s ahead (exp is whole seconds). Everything a
# test does with it before exp (up to three connects and three `auth` round trips) must
# fit in that window on a loaded machine, where 1-2 s was not always enough.
SHORT = 4
EXPIRY_WAIT = 12     # receive timeout for the expiry frames: exp + the heartbeat's 1 s sweep


@pytest.fixture(scope="module")
def lt_server(tmp_path_factory, pg_url):
    with running_server(tmp_path_factory, "lifetime", database_url=pg_url,
                        env={"WS_JWT_LEEWAY_SECONDS": 0}) as srv:
        yield srv


@pytest.fixture
def user(seed):
    return seed.user()


def _exp(token: str) -> int:
    return jwt.decode(token, options={"verify_signature": False})["exp"]


def test_token_expiring_while_connected_gets_token_expired_then_4001(lt_server, user):
    token = lt_server.token(user, exp_in=SHORT)
    ws = lt_server.connect(user, token=token)
    assert ws.welcome["data"].get("expiresAt") in (None, iso_ms(_exp(token))), ws.welcome
    # a second connection whose refresh is refused: the refusal must not extend it
    refused = lt_server.connect(user, token=lt_server.token(user, exp_in=SHORT))
    refused.send_json({"type": "auth", "token": make_token("wrong-secret-" + "k" * 24, user, exp_in=3600)})
    refused.expect_error("invalid_token")
    ws.ping()                                   # alive before exp
    for conn in (ws, refused):
        conn.expect_error("token_expired", "Token expired", timeout=EXPIRY_WAIT)
        assert conn.expect_closed() == 4001


def test_refresh_before_exp_keeps_the_connection_past_the_old_exp(lt_server, user):
    old = lt_server.token(user, exp_in=SHORT)
    ws = lt_server.connect(user, token=old)
    twice = lt_server.connect(user, token=old)        # refreshed twice: the last one counts
    witness = lt_server.connect(user, token=old)      # same token, never refreshed
    new = lt_server.token(user, exp_in=3600)
    ws.send_json({"type": "auth", "token": new})
    frame = ws.expect_type("authenticated")
    assert frame["data"]["expiresAt"] == iso_ms(_exp(new)), frame
    mid = lt_server.token(user, exp_in=SHORT)
    twice.send_json({"type": "auth", "token": mid})
    assert twice.expect_type("authenticated")["data"]["expiresAt"] == iso_ms(_exp(mid))
    late = lt_server.token(user, exp_in=7200)
    twice.send_json({"type": "auth", "token": late})
    assert twice.expect_type("authenticated")["data"]["expiresAt"] == iso_ms(_exp(late))
    # the old exp passes: the heartbeat sweep that expires the witness checked the others too
    witness.expect_error("token_expired", timeout=EXPIRY_WAIT)
    assert witness.expect_closed() == 4001
    for conn in (ws, twice):
        conn.barrier()                                # nothing but our pong: no token_expired
    ws.subscribe({"type": "creator", "id": "still-here"})


def test_auth_with_another_users_token_is_an_error_then_4001(lt_server, seed, user):
    ws = lt_server.connect(user)
    other = seed.user()
    ws.send_json({"type": "auth", "token": lt_server.token(other)})
    err = ws.expect_type("error")
    assert err["data"]["code"] == "invalid_token", err
    assert ws.expect_closed() == 4001
    # the other user's token itself is fine: it connects as the other user
    lt_server.connect(other).ping()


def _invalid_tokens(srv, user):
    return {
        "garbage": "not-a-jwt",
        "empty": "",
        "wrong_secret": make_token("wrong-secret-" + "k" * 24, user),
        "alg_none": forged_token({"alg": "none", "typ": "JWT"}, valid_payload(user)),
        "rs256": jwt.encode(valid_payload(user), rsa_key(), algorithm="RS256"),
        "expired": srv.token(user, exp_in=-120),
        "no_exp": srv.token(user, exp_in=None),
        "not_a_string": 12345,
        "missing": None,
    }


@pytest.mark.parametrize("kind", ["garbage", "empty", "wrong_secret", "alg_none", "rs256", "expired", "no_exp",
                                  "not_a_string", "missing"])
def test_auth_with_an_invalid_token_is_invalid_token_and_connection_lives(lt_server, user, kind):
    token = lt_server.token(user, exp_in=3600)
    ws = lt_server.connect(user, token=token)
    frame = {"type": "auth"}
    bad = _invalid_tokens(lt_server, user)[kind]
    if bad is not None:
        frame["token"] = bad
    ws.send_json(frame)
    err = ws.expect_error("invalid_token", "Invalid token")
    assert "channel" not in err["data"], err
    ws.barrier()
    # the refused token changed nothing: a later valid refresh still works
    fresh = lt_server.token(user, exp_in=1800)
    ws.send_json({"type": "auth", "token": fresh})
    assert ws.expect_type("authenticated")["data"]["expiresAt"] == iso_ms(_exp(fresh))


def test_expired_token_is_refused_at_the_handshake_without_leeway(lt_server, user):
    refusal = refused_handshake(lt_server.url(lt_server.token(user, exp_in=-2)))
    assert refusal.status == 401, refusal
    assert refusal.json().get("reason") == "expired_token", refusal.body


def test_default_leeway_applies_at_the_handshake_and_while_connected(server, user):
    # expired 7-8 s ago: inside the default 10 s leeway, so the handshake succeeds ...
    ws = server.connect(user, token=server.token(user, exp_in=-7))
    ws.ping()
    # ... and the same leeway ends it 2-3 s later
    ws.expect_error("token_expired", timeout=EXPIRY_WAIT)
    assert ws.expect_closed() == 4001
    refusal = refused_handshake(server.url(server.token(user, exp_in=-15)))
    assert refusal.status == 401 and refusal.json().get("reason") == "expired_token", refusal


@pytest.mark.parametrize("value", ["31", "-1", "ten"])
def test_leeway_outside_0_to_30_refuses_to_start(server_factory, value):
    srv = server_factory.create("bad-leeway", env={"WS_JWT_LEEWAY_SECONDS": value})
    srv.start(wait=False)
    rc = srv.wait_exit(20)
    assert rc is not None and rc != 0, f"started with WS_JWT_LEEWAY_SECONDS={value}"
    assert "WS_JWT_LEEWAY_SECONDS" in srv.output(), srv.output_tail()


FAR_EXP = {"1e20": 1e20, "max_safe_integer": 2 ** 53 - 1, "year_10000": 253402300800, "400_digits": 10 ** 400}


@pytest.mark.parametrize("exp", list(FAR_EXP.values()), ids=list(FAR_EXP))
def test_an_exp_beyond_year_9999_gets_a_welcome_and_a_refresh(lt_server, user, exp):
    """Issue 18.5: such an `exp` is a valid signed token meaning "never"; `expiresAt` is
    the last instant ISO-8601 can name. It used to raise after the connection was
    registered (no welcome, the connection left in the hub: after 20 tries the user was
    refused 429), and `auth` with it closed 1011."""
    far = make_token(lt_server.jwt_secret, user, exp_in=None, exp=exp)
    ws = lt_server.connect(user, token=far)
    assert ws.welcome["data"]["expiresAt"] == "9999-12-31T23:59:59.999Z", ws.welcome
    ws.ping()
    ws.send_json({"type": "auth", "token": far})
    assert ws.expect_type("authenticated")["data"]["expiresAt"] == "9999-12-31T23:59:59.999Z"
    ws.barrier()
    # a connection of a token with a usual exp refreshes to the far one, and back
    other = lt_server.connect(user)
    other.send_json({"type": "auth", "token": far})
    assert other.expect_type("authenticated")["data"]["expiresAt"] == "9999-12-31T23:59:59.999Z"
    usual = lt_server.token(user, exp_in=1800)
    other.send_json({"type": "auth", "token": usual})
    assert other.expect_type("authenticated")["data"]["expiresAt"] == iso_ms(_exp(usual))


def test_auth_of_a_user_deleted_since_the_handshake_is_refused_then_4001(lt_server, seed):
    """Issue 18.8: the handshake refuses a deleted user; a connection opened before the
    delete refreshed its token and subscribed on as if nothing happened. `auth` asks the
    database again (not the handshake's seconds-long cache) and ends it."""
    uid = seed.user()
    ws = lt_server.connect(uid)
    ws.subscribe({"type": "creator", "id": "before-the-delete"})
    seed.execute('DELETE FROM "users" WHERE "id" = %s', (uid,))
    ws.send_json({"type": "auth", "token": lt_server.token(uid, exp_in=3600)})
    ws.expect_error("invalid_token", "Invalid token")
    assert ws.expect_closed() == 4001
    # and a new handshake is refused at once, whatever the handshake's cache held
    assert refused_handshake(lt_server.url(lt_server.token(uid))).status == 401
