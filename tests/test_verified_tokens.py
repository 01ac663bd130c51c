"""auth.VerifiedTokens: the per-worker cache of verified tokens (pure logic, no server)."""
import time

import pytest

from fonana_realtime.auth import AuthError, VerifiedTokens, mint_token
from support.tokens import forged_token

SECRET = "s" * 32


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


def test_a_verified_token_is_answered_from_the_cache_until_exp():
    clock = Clock()
    cache = VerifiedTokens((SECRET,), leeway=0, clock=clock)
    token = mint_token("u1", SECRET, lifetime_seconds=60)
    first = cache.verify(token)
    assert first.user_id == "u1"
    assert cache.verify(token) is first                 # the same object: no second decode
    clock.now = first.expires_at + 1                    # past exp: not served from the cache
    again = cache.verify(token)                         # (PyJWT's own clock still accepts it)
    assert again is not first and again == first
    assert len(cache._entries) == 0                     # and not cached again past its exp


def test_the_cache_holds_hashes_not_tokens_and_is_bounded():
    cache = VerifiedTokens((SECRET,), leeway=0, size=2)
    tokens = [mint_token(f"u{i}", SECRET) for i in range(3)]
    for token in tokens:
        cache.verify(token)
    assert len(cache._entries) == 2
    for key in cache._entries:
        assert all(key != t.encode() and t.encode() not in key for t in tokens)
    assert not any(t in repr(cache._entries) for t in tokens)


def test_refused_tokens_are_not_cached_and_stay_refused():
    cache = VerifiedTokens((SECRET,), leeway=0)
    bad = forged_token({"alg": "HS256", "typ": "JWT"}, {"userId": "u1", "exp": int(time.time()) + 60},
                       b"x" * 32)
    for _ in range(2):
        with pytest.raises(AuthError) as exc:
            cache.verify(bad)
        assert exc.value.reason == "invalid_token"
    for missing in (None, ""):
        with pytest.raises(AuthError) as exc:
            cache.verify(missing)
        assert exc.value.reason == "missing_token"
    assert len(cache._entries) == 0


def test_a_token_for_another_secret_is_refused_even_if_cached_elsewhere():
    other = VerifiedTokens(("t" * 32,), leeway=0)
    token = mint_token("u1", SECRET)
    VerifiedTokens((SECRET,), leeway=0).verify(token)
    with pytest.raises(AuthError):
        other.verify(token)
