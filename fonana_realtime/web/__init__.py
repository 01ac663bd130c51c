"""The HTTP side: one blueprint per concern.

- websocket.py  `/ws` and `/`: refuse before upgrading, then hand the socket to lifecycle.serve
- upgrade.py    the WebSocket upgrade itself, from the environ gunicorn parsed
- api.py        `/api/*`: event injection and notifications (server-to-server)
- control.py    `/api/disconnect`, `/api/unsubscribe`, `/api/revoke`: operators (PROTOCOL.md 9)
- presence.py   `/api/presence`, `/api/connections`, `/api/channels`, `/api/info`: who is where
- admin.py      `/admin`: the operator page, its login and the data its script reads
- ops.py        `/health`, `/ready`, `/metrics`, `/stats`
"""
from flask import current_app, jsonify
from flask.json.provider import DefaultJSONProvider


class StandardJSONProvider(DefaultJSONProvider):
    """Flask's JSON, standard only: Python's json writes NaN/Infinity by default, which a
    JSON.parse rejects; with allow_nan=False such a value is a ValueError (then a 500 JSON
    answer) instead of a body no client can read. Keys keep their order."""

    sort_keys = False

    def dumps(self, obj, **kwargs):
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)


def runtime():
    """This worker's Runtime (see runtime.py)."""
    return current_app.extensions["fonana_realtime"]


def bearer_token(header: str) -> str:
    """The credential of an `Authorization: Bearer ...` header value, "" without one."""
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


def json_error(status: int, error: str, **fields):
    body = {"error": error}
    body.update(fields)
    response = jsonify(body)
    response.status_code = status
    return response
