"""auth's faster segment check against PyJWT's own (pure logic, no server)."""
import random

import pytest
from jwt.api_jws import PyJWS
from jwt.exceptions import DecodeError

from fonana_realtime.auth import BASE64URL_ALPHABET, AuthError, _SegmentsCheckedInC, mint_token, verify_token

SECRET = "s" * 32


def _answer(decode, segment: bytes):
    try:
        return ("ok", decode(segment, "payload"))
    except DecodeError as exc:
        return ("error", str(exc))


EDGES = [b"", b"A", b"AA", b"AAA", b"AAAA", b"AAAAA", b"eyJhIjoxfQ", b"eyJhIjoxfQ==", b"eyJhIjoxfQ=",
         b"AB", b"AC", b"AAB", b"AAC", b"_-_-", b"!!!!", b"AA==", b"AA===", b"A===", b"AAA=", b"AAAA=",
         b"ab+/", b"ab cd", b"\xff\xfe", b"AA\nA", b"=", b"====", b"A=A="]


@pytest.mark.parametrize("segment", EDGES)
def test_the_fast_check_answers_as_pyjwt_on_edge_segments(segment):
    assert _answer(_SegmentsCheckedInC._decode_base64url_segment, segment) == \
        _answer(PyJWS._decode_base64url_segment, segment)


def test_the_fast_check_answers_as_pyjwt_on_random_segments():
    rng = random.Random(11)
    alphabet = BASE64URL_ALPHABET + b"=+/ .!\x00\xff"
    for _ in range(20_000):
        n = rng.randrange(0, 14)
        pool = BASE64URL_ALPHABET if rng.random() < 0.7 else alphabet
        segment = bytes(rng.choice(pool) for _ in range(n))
        assert _answer(_SegmentsCheckedInC._decode_base64url_segment, segment) == \
            _answer(PyJWS._decode_base64url_segment, segment), segment


def test_a_token_with_a_padded_or_junk_segment_is_still_refused():
    token = mint_token("u1", SECRET)
    header, payload, signature = token.split(".")
    assert verify_token(token, (SECRET,)).user_id == "u1"
    for bad in (f"{header}.{payload}!.{signature}", f"{header}.{payload}.{signature}A",
                f"{header}==.{payload}.{signature}", f"{header}.{payload} .{signature}"):
        with pytest.raises(AuthError) as err:
            verify_token(bad, (SECRET,))
        assert err.value.reason == "invalid_token", bad
