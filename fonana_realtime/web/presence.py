"""Who is where (PROTOCOL.md 9), over every worker and host: `GET /api/presence/<key>`,
`GET /api/presence?keys=a,b`, `GET /api/connections?userId=U`, `GET /api/channels?limit=N`,
`GET /api/info`. Reads only; presence.py keeps the data. Same key as the rest of `/api`.
"""
from __future__ import annotations

import redis
from flask import Blueprint, jsonify, request

from ..channels import InvalidChannel, parse_channel_key, valid_id
from . import json_error, runtime
from .api import BadRequest, refusals_of_api

bp = refusals_of_api(Blueprint("presence", __name__, url_prefix="/api"))

MAX_KEYS = 1000
MAX_LIMIT = 1000


@bp.errorhandler(redis.RedisError)
def _redis_down(exc):
    return json_error(503, "broker_unavailable")


@bp.before_request
def _enabled():
    if not runtime().presence.enabled:
        return json_error(503, "presence_disabled", reason="WS_PRESENCE=0")
    return None


def _key(value) -> str:
    """A channel key (`post_P`, ...) or `user_U`."""
    if isinstance(value, str) and value.startswith("user_") and valid_id(value[5:]):
        return value
    try:
        return parse_channel_key(value).key
    except InvalidChannel:
        raise BadRequest(f"not a channel key or user_<id>: {str(value)[:200]!r}") from None


@bp.get("/presence/<key>")
def presence_of(key):
    return jsonify(runtime().presence.channel(_key(key)))


@bp.get("/presence")
def presence_counts():
    raw = request.args.get("keys", "")
    keys = [k for k in raw.split(",") if k]
    if not keys:
        raise BadRequest("keys= needs a comma list of channel keys (or user_<id>)")
    if len(keys) > MAX_KEYS:
        raise BadRequest(f"at most {MAX_KEYS} keys", limit=MAX_KEYS)
    keys = list(dict.fromkeys(_key(k) for k in keys))
    return jsonify({"counts": runtime().presence.counts(keys)})


@bp.get("/connections")
def connections():
    user_id = request.args.get("userId")
    if not valid_id(user_id):
        raise BadRequest("userId must be an id matching [A-Za-z0-9_-]{1,128}")
    found = runtime().presence.connections(user_id)
    return jsonify({"userId": user_id, "connections": found})


@bp.get("/channels")
def channels():
    raw = request.args.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return jsonify({"channels": runtime().presence.channels(int(raw))})


@bp.get("/info")
def info():
    workers = runtime().presence.info()
    return jsonify({"workers": workers, "hosts": len({w.get("host") for w in workers}),
                    "connections": sum(w.get("connections", 0) for w in workers)})
