"""`/health` (alive), `/ready` (can serve), `/metrics` and `/stats` (operators)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .. import metrics
from ..store import StoreUnavailable
from . import json_error, runtime
from .api import require_api_key

bp = Blueprint("ops", __name__)


@bp.get("/health")
def health():
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready():
    rt = runtime()
    if rt.draining:
        return json_error(503, "not_ready", reason="draining")
    try:
        rt.store.ping()
    except StoreUnavailable:
        return json_error(503, "not_ready", reason="database_unavailable")
    ok, reason = rt.broker.ready()
    if not ok:
        return json_error(503, "not_ready", reason=reason)
    body = {"status": "ready", "database": rt.store.kind, "broker": rt.broker.name}
    if reason != "ok":                  # ready all the same: e.g. broker_shards_missing
        body["degraded"] = reason
    return jsonify(body)


def _operator_only():
    settings = runtime().settings
    return None if settings.metrics_public else require_api_key(settings)


@bp.get("/metrics")
def prometheus_metrics():
    refused = _operator_only()
    if refused is not None:
        return refused
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


@bp.get("/stats")
def stats():
    refused = _operator_only()
    if refused is not None:
        return refused
    rt = runtime()
    return jsonify({"metrics": metrics.snapshot(),
                    "worker": {"connections": len(rt.hub.connections),
                               "topics": len(rt.hub.by_topic), "broker": rt.broker.name}})
