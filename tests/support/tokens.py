"""User tokens as the Fonana Next.js app mints them (PyJWT, HS256, `userId` claim, `exp`),
plus the malformed and hostile variants the handshake must refuse."""
from __future__ import annotations

import base64
import json
import time

import jwt

_MISSING = object()


def make_token(secret: str, user_id: str | None = None, *, exp_in: float | None = 3600, sub=_MISSING,
               algorithm: str = "HS256", **claims) -> str:
    """A signed token. `exp_in=None` leaves `exp` out; negative values make it expired."""
    payload: dict = {"iat": int(time.time())}
    if user_id is not None:
        payload["userId"] = user_id
    if sub is not _MISSING:
        payload["sub"] = sub
    if exp_in is not None:
        payload["exp"] = int(time.time() + exp_in)
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm=algorithm)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_token(header: dict, payload: dict, signature: bytes = b"") -> str:
    """A token assembled by hand: used for `alg: none` and foreign algorithms."""
    return ".".join((
        _b64(json.dumps(header, separators=(",", ":")).encode()),
        _b64(json.dumps(payload, separators=(",", ":")).encode()),
        _b64(signature),
    ))


def valid_payload(user_id: str, exp_in: float = 3600) -> dict:
    return {"userId": user_id, "iat": int(time.time()), "exp": int(time.time() + exp_in)}
