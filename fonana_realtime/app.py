"""The application factory: settings → runtime → blueprints."""
from __future__ import annotations

import logging
import logging.config

from flask import Flask
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import WebsocketMismatch

from .logs import console_format, logging_config
from .runtime import Runtime
from .settings import Settings, load_settings
from .web import StandardJSONProvider, admin, api, control, json_error, ops, presence, websocket

log = logging.getLogger("fonana_realtime.app")


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    if not logging.getLogger("gunicorn.error").handlers:
        # Outside gunicorn (tests, `flask run`) configure logging ourselves;
        # under gunicorn, gunicorn.conf.py has applied the same config already.
        logging.config.dictConfig(logging_config(
            settings.log_dir, settings.log_level,
            console_format(settings.log_format, settings.production)))
    for line in settings.warnings:
        log.warning(line, extra={"event": "config_warning"})

    app = Flask(__name__)
    app.json = StandardJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.api_max_body_bytes
    # No route answers OPTIONS: Flask's automatic answer was a 200 text/html with an empty
    # body. This API is server-to-server (no CORS; its key must never be in a browser),
    # so OPTIONS gets the JSON 405 of any method a route does not take (PROTOCOL.md 8).
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    rt = app.extensions["fonana_realtime"] = Runtime(settings)

    @app.before_request
    def _start_worker():
        # The worker's background greenlets (broker listener, heartbeat) start with its
        # first request of any kind, inside the gevent worker, so /ready and publishes
        # work before any client connects. Runtime.start() runs once.
        rt.start()

    app.register_blueprint(ops.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(control.bp)
    app.register_blueprint(presence.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(websocket.bp)
    app.wsgi_app = websocket.Upgrades(app, rt, app.wsgi_app)

    @app.errorhandler(WebsocketMismatch)
    def _not_a_websocket(exc):
        # GET /ws (or /) without the upgrade headers: say what the endpoint is for.
        response = json_error(426, "upgrade_required",
                              reason="this endpoint speaks WebSocket: ws://HOST/ws?token=<JWT>")
        response.headers["Upgrade"] = "websocket"
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        name = (exc.name or "error").lower().replace(" ", "_")
        response = json_error(exc.code or 500, name, reason=exc.description)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)    # RFC 9110 15.5.6
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error", extra={"event": "internal_error"})
        return json_error(500, "internal_error")

    return app
