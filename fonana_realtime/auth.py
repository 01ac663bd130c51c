"""Token → identity. HS256 JWTs signed by the Fonana Next.js app; nothing else.

Refusal reasons are the ones the handshake reports (PROTOCOL.md 2.1). The user's
existence is checked by the caller through the store, so this module stays pure.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS
from jwt.exceptions import DecodeError
from jwt.utils import base64url_decode, base64url_encode

MAX_TOKEN_BYTES = 8192          # a real Fonana token is a few hundred bytes
# The last instant an ISO-8601 time (the welcome's and `authenticated`'s `expiresAt`) can
# name: 9999-12-31T23:59:59.999Z. A later `exp` (1e20, Number.MAX_SAFE_INTEGER, an
# integer of 400 digits) is valid JWT and means "never" just as well: it is taken as this.
# Unclamped, building the welcome raised after the connection was registered (issue 18).
LAST_EXPIRY = 253402300799.9995     # (.999 is .998999... as a double)


class AuthError(Exception):
    """The token is refused; `reason` is one of missing_token, invalid_token, expired_token."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    expires_at: float            # unix seconds (the token's `exp`)
    issued_at: float | None = None   # the token's `iat`, None without one (revocations.py)


class _HS256KeyCheckedOnce(HMACAlgorithm):
    """PyJWT's HS256, with its key checks made once per secret instead of once per token.

    PyJWT's `prepare_key` refuses a secret that looks like a PEM, SSH, DER or JWK key by
    trying to parse it as each: ~5 % of a connect in a reconnect storm (py-spy, issue
    11). Our secrets are fixed for the life of a worker, so the verdict is kept per secret;
    a secret PyJWT refuses is refused every time (nothing is kept for it).
    """

    def __init__(self):
        super().__init__(HMACAlgorithm.SHA256)
        self._prepared: dict = {}

    def prepare_key(self, key):
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = super().prepare_key(key)
            if len(self._prepared) < 8:         # JWT_SECRET, NEXTAUTH_SECRET (and tests')
                self._prepared[key] = prepared
        return prepared


# What a base64url segment may hold, as PyJWT 2.15 checks it (`jwt.api_jws`).
BASE64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class _SegmentsCheckedInC(PyJWS):
    """PyJWT's JWS, with its check of each segment's alphabet done by one `bytes.translate`.

    PyJWT 2.15 refuses a segment with a byte outside base64url by testing each byte in a
    generator expression (GHSA-hxm8-2xgr-2p9m): ~8 µs of a ~19 µs verification for a
    Fonana token (micro-benchmark), 1.4 % of a connect in the storm profile (issue 11).
    A segment of base64url bytes only, the one a real token has, is decoded here with
    exactly PyJWT's remaining checks; any other (`=` padding, junk) goes to PyJWT's own
    method, errors and all. tests/unit/test_auth.py holds the two to the same answers.
    """

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        if segment.translate(None, BASE64URL_ALPHABET):
            return PyJWS._decode_base64url_segment(segment, name)
        if len(segment) % 4 == 1:
            raise DecodeError(f"Invalid {name} padding")
        decoded = base64url_decode(segment)     # base64url bytes of a valid length: no error
        if base64url_encode(decoded) != segment:
            raise DecodeError(f"Invalid {name} padding")
        return decoded


_jwt = jwt.PyJWT()
# PyJWT keeps its algorithm registry on the PyJWS it owns (`_jws`, as PyJWT's own module
# object does): ours is the one above, and only HS256 is registered at all.
_jwt._jws = _SegmentsCheckedInC(options=_jwt._get_sig_options())
for _name in _jwt._jws.get_algorithms():
    _jwt._jws.unregister_algorithm(_name)
_jwt._jws.register_algorithm("HS256", _HS256KeyCheckedOnce())


def verify_token(token: str | None, secrets: tuple[str, ...], leeway: int = 10) -> Identity:
    """Check a token against every configured secret (JWT_SECRET, NEXTAUTH_SECRET).

    HS256 only: the algorithm list is fixed here, so `none`, RS*/ES* and key-in-header
    tricks are refused by PyJWT before any signature work. `exp` is required.
    """
    if not token:
        raise AuthError("missing_token")
    if len(token) > MAX_TOKEN_BYTES or not secrets:
        raise AuthError("invalid_token")
    expired = False
    for secret in secrets:
        try:
            claims = _jwt.decode(token, secret, algorithms=["HS256"], leeway=leeway,
                                options={"require": ["exp"], "verify_aud": False,
                                         "verify_iss": False})
        except jwt.ExpiredSignatureError:
            expired = True      # signed by us but stale: say so, but try the other secret
            continue
        except jwt.PyJWTError:
            continue
        user_id = claims.get("userId") or claims.get("sub")
        if not isinstance(user_id, str) or not user_id or len(user_id) > 128:
            raise AuthError("invalid_token")
        try:
            exp = min(float(claims["exp"]), LAST_EXPIRY)
        except OverflowError:                  # an integer beyond the double range
            exp = LAST_EXPIRY
        except (TypeError, ValueError):
            raise AuthError("invalid_token") from None
        iat = claims.get("iat")
        issued = float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) \
            and math.isfinite(iat) else None
        return Identity(user_id=user_id, expires_at=exp, issued_at=issued)
    raise AuthError("expired_token" if expired else "invalid_token")


class VerifiedTokens:
    """Tokens this worker has verified, until their `exp`: a client flapping on one
    worker pays PyJWT's decode (~40 µs, about 5 % of a connect) once per token, not once
    per reconnect.

    Keyed by the token's SHA-256, so the cache holds no token; bounded (least recently
    used goes first). Only successes are kept, and an entry is used only before `exp`:
    after it the token goes through `verify_token` again, leeway and all. The secrets
    are fixed for the life of a worker, so an entry never outlives the key that signed it.
    """

    def __init__(self, secrets: tuple[str, ...], leeway: int, size: int = 10_000, clock=time.time):
        self.secrets, self.leeway, self.size, self.clock = secrets, leeway, size, clock
        self._entries: OrderedDict[bytes, Identity] = OrderedDict()

    def verify(self, token: str | None) -> Identity:
        if not token or len(token) > MAX_TOKEN_BYTES or self.size <= 0:
            return verify_token(token, self.secrets, self.leeway)
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        entries = self._entries
        identity = entries.get(key)
        if identity is not None:
            if identity.expires_at > self.clock():
                entries.move_to_end(key)
                return identity
            del entries[key]
        identity = verify_token(token, self.secrets, self.leeway)
        if identity.expires_at > self.clock():
            entries[key] = identity
            if len(entries) > self.size:
                entries.popitem(last=False)
        return identity


def mint_token(user_id: str, secret: str, lifetime_seconds: int = 7 * 24 * 3600) -> str:
    """A token as the Next.js app makes it (claim `userId`); used by the CLI and tests."""
    import time
    now = int(time.time())
    return jwt.encode({"userId": user_id, "sub": user_id, "iat": now,
                       "exp": now + lifetime_seconds}, secret, algorithm="HS256")
