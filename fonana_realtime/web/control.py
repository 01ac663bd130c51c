"""The operators' control calls (PROTOCOL.md 9): `POST /api/disconnect`,
`POST /api/unsubscribe`, `POST /api/revoke`, `DELETE /api/revoke/<user>`.

Same key, body rules and refusals as the rest of `/api` (api.py). Each call is checked
whole, then acts on every worker of every host through one control message (control.py);
202 means the message was handed to the broker. Each writes one log line (the call, the
user acted on, what, the caller's address: never a token or the key) and counts in
`fonana_rt_control_calls`.
"""
from __future__ import annotations

import logging
import math
import time

from flask import Blueprint, jsonify, request

from .. import close_codes, metrics
from ..channels import InvalidChannel, parse_channel_any, valid_id
from ..revocations import StoreError
from . import json_error, runtime
from .api import BadRequest, _id, json_body, refusals_of_api

log = logging.getLogger("fonana_realtime.control")
bp = refusals_of_api(Blueprint("control", __name__, url_prefix="/api"))

MAX_REASON = 123        # a close frame's reason: 125 bytes of payload less the code


@bp.errorhandler(StoreError)
def _store_down(exc):
    return json_error(503, "unavailable", reason="revocation_store_unavailable")


def _done(call: str, user_id: str, **what):
    metrics.CONTROL_CALLS.labels(call).inc()
    log.info("operator call", extra={"event": "control", "call": call, "user_id": user_id,
                                     "caller": request.remote_addr, **what})


@bp.post("/disconnect")
def disconnect():
    body = json_body()
    user_id = _id(body, "userId")
    code = body.get("code", close_codes.DISCONNECTED)
    if isinstance(code, bool) or not isinstance(code, int) or not 4000 <= code <= 4999:
        raise BadRequest("code must be a whole number from 4000 to 4999")
    reason = body.get("reason")
    if reason is not None:
        if not isinstance(reason, str):
            raise BadRequest("reason must be a string")
        if len(reason.encode()) > MAX_REASON:
            raise BadRequest(f"reason must be at most {MAX_REASON} bytes of UTF-8 (a close frame's limit)")
    else:
        reason = close_codes.REASONS.get(code, "")
    runtime().control.send("disconnect", user_id, code=code, reason=reason)
    _done("disconnect", user_id, code=code)
    return jsonify({"userId": user_id, "code": code}), 202


@bp.post("/unsubscribe")
def unsubscribe():
    body = json_body()
    user_id = _id(body, "userId")
    if body.get("channel") is None:
        raise BadRequest("channel is required: a channel object or key")
    try:
        key = parse_channel_any(body["channel"]).key
    except InvalidChannel as exc:
        raise BadRequest(f"channel: {exc}") from None
    runtime().control.send("unsubscribe", user_id, key=key, channel=body["channel"])
    _done("unsubscribe", user_id, channel=key)
    return jsonify({"userId": user_id, "channelKey": key}), 202


@bp.post("/revoke")
def revoke():
    body = json_body()
    user_id = _id(body, "userId")
    before = body.get("before")
    if before is None:
        before = time.time()
    elif isinstance(before, bool) or not isinstance(before, (int, float)) or not math.isfinite(before) \
            or before < 0:
        raise BadRequest("before must be unix seconds (a number >= 0)")
    rt = runtime()
    rt.revocations.revoke(user_id, float(before))     # kept first: a restart after the 202 still refuses
    rt.control.send("revoke", user_id, before=float(before))
    _done("revoke", user_id, before=float(before))
    return jsonify({"userId": user_id, "before": float(before),
                    "until": float(before) + rt.settings.revocation_seconds}), 202


@bp.delete("/revoke/<user_id>")
def unrevoke(user_id: str):
    if not valid_id(user_id):
        raise BadRequest("userId must be an id matching [A-Za-z0-9_-]{1,128}")
    rt = runtime()
    rt.revocations.unrevoke(user_id)
    rt.control.send("unrevoke", user_id)
    _done("unrevoke", user_id)
    return jsonify({"userId": user_id}), 202
