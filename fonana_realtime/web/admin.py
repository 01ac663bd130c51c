"""`GET /admin`: the operator page (PROTOCOL.md 9), served with its assets (static/admin/:
the page, its script, and uPlot vendored from npm; no CDN).

The API key is typed once into the login form and sent in a POST body (never in a URL,
so never in an access log line). In exchange the browser gets a session cookie that
scripts cannot read (HttpOnly), sent only to /admin (Path) and only from this site
(SameSite=Strict; Secure behind TLS): `<expiry>.<HMAC-SHA256 of it under the key>`, so
it holds no key, dies with the key (a new WS_API_SECRET ends every session) and after
SESSION_SECONDS. The page's script reads `/admin/data/*` with that cookie; the two that
act (disconnect, revoke) also need the `X-Fonana-Admin` header, which a cross-site form
cannot send. What they do is exactly the `/api` call of the same name (web/control.py,
web/presence.py), log line and metric included.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import redis
from flask import Blueprint, Response, jsonify, redirect, request

from . import control, json_error, presence, runtime
from .api import refusals_of_api
from ..revocations import StoreError

STATIC = Path(__file__).resolve().parent / "static" / "admin"
bp = refusals_of_api(Blueprint("admin", __name__, static_folder=str(STATIC), static_url_path="/admin/static"),
                     api_key=False)        # the page has its own session (_guard)
bp.register_error_handler(StoreError, control._store_down)
bp.register_error_handler(redis.RedisError, presence._redis_down)

COOKIE = "fonana_admin"
SESSION_SECONDS = 12 * 3600
CSRF_HEADER = "X-Fonana-Admin"
# The page runs only its own files: no inline script, nothing from elsewhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def _sign(secret: str, expiry: int) -> str:
    return hmac.new(secret.encode(), f"fonana-admin|{expiry}".encode(), hashlib.sha256).hexdigest()


def _session_ok() -> bool:
    secret = runtime().settings.api_secret
    raw = request.cookies.get(COOKIE, "")
    expiry, _, mac = raw.partition(".")
    if not secret or not expiry.isdigit() or int(expiry) < time.time():
        return False
    return hmac.compare_digest(mac, _sign(secret, int(expiry)))


def _page(name: str, status: int = 200) -> Response:
    response = Response((STATIC / name).read_bytes(), status=status, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/admin")
def page():
    if not runtime().settings.api_secret:
        return json_error(503, "api_disabled", reason="WS_API_SECRET is not set")
    return _page("index.html" if _session_ok() else "login.html")


@bp.post("/admin/login")
def login():
    secret = runtime().settings.api_secret
    if not secret:
        return json_error(503, "api_disabled", reason="WS_API_SECRET is not set")
    given = request.form.get("key", "")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        return _page("login.html", status=401)
    expiry = int(time.time()) + SESSION_SECONDS
    response = redirect("/admin", code=303)
    response.set_cookie(COOKIE, f"{expiry}.{_sign(secret, expiry)}", max_age=SESSION_SECONDS, path="/admin",
                        httponly=True, samesite="Strict", secure=request.scheme == "https")
    return response


@bp.post("/admin/logout")
def logout():
    response = redirect("/admin", code=303)
    response.delete_cookie(COOKIE, path="/admin")
    return response


@bp.before_request
def _guard():
    if not request.path.startswith("/admin/data/"):
        return None
    if not _session_ok():
        return json_error(401, "unauthorized", reason="log in at /admin")
    if request.method != "GET" and request.headers.get(CSRF_HEADER) != "1":
        return json_error(403, "forbidden", reason=f"{CSRF_HEADER}: 1 required")
    if not runtime().presence.enabled and request.method == "GET":
        return json_error(503, "presence_disabled", reason="WS_PRESENCE=0")
    return None


@bp.get("/admin/data/overview")
def overview():
    rt = runtime()
    workers = rt.presence.info()
    totals = {name: sum(w.get(name, 0) for w in workers)
              for name in ("connections", "subscriptions", "deliveries", "published", "slowConsumerCloses",
                           "recoveries")}
    return jsonify({"now": time.time(), "workers": workers, "hosts": len({w.get("host") for w in workers}),
                    "channels": rt.presence.channels(10), "totals": totals})


@bp.get("/admin/data/user")
def user():
    return presence.connections()            # ?userId=, as GET /api/connections


@bp.get("/admin/data/channel")
def channel():
    return presence.presence_of(request.args.get("key", ""))


@bp.post("/admin/data/disconnect")
def disconnect():
    return control.disconnect()              # {"userId"}, as POST /api/disconnect


@bp.post("/admin/data/revoke")
def revoke():
    return control.revoke()                  # {"userId"}, as POST /api/revoke
