"""The HTTP side: one blueprint per concern.

- websocket.py  `/ws` and `/`: refuse before upgrading, then serve a Connection
- upgrade.py    the WebSocket upgrade itself, from the environ gunicorn parsed
- api.py        `/api/*`: event injection and notifications (server-to-server)
- ops.py        `/health`, `/ready`, `/metrics`, `/stats`
"""
from flask import current_app, jsonify


def runtime():
    """This worker's Runtime (see runtime.py)."""
    return current_app.extensions["fonana_realtime"]


def json_error(status: int, error: str, **fields):
    body = {"error": error}
    body.update(fields)
    response = jsonify(body)
    response.status_code = status
    return response
