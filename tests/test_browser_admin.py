"""The operator page `GET /admin` (PROTOCOL.md 9, issue 20) in headless Chromium
(Playwright, the Debian package's browser, as tests/test_browser_legacy.py): log in with
the key typed into the form, see the plots move while events are published, look a user
up and disconnect them from the page (their socket closes with 4010), revoke another
(4011), look a channel up. The key never reaches a URL, a script-readable cookie or a log.
"""
from __future__ import annotations

import threading

import pytest

from support.browser import Browser, chromium_path
from support.waiting import wait_until

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(chromium_path() is None,
                                 reason="no chromium (scripts/ensure-services installs the Debian package)")]


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory, pg_url):
    from support.server import Server
    server = Server(tmp_path_factory.mktemp("admin-server"), name="admin-server", database_url=pg_url).start()
    yield server
    server.stop()


def page_state(page) -> dict:
    return page.evaluate("() => JSON.parse(JSON.stringify(window.fonanaAdmin))")


def log_in(browser, srv):
    page = browser.tab(srv.base_url + "/admin")
    page.fill("#key", srv.api_key)
    page.click("#login")
    page.wait_for_selector("#plot-rates canvas", timeout=15000)
    page.wait_for_function("() => window.fonanaAdmin && window.fonanaAdmin.polls >= 1", timeout=15000)
    return page


def test_log_in_watch_the_plots_move_and_act_on_users(browser, srv, seed):
    creator, fan, banned, watcher = seed.user(is_creator=True), seed.user(), seed.user(), seed.user()
    channel = {"type": "creator", "id": creator}
    clients = {user: srv.connect(user) for user in (fan, banned, watcher)}
    for ws in clients.values():
        ws.subscribe(channel)
    page = log_in(browser, srv)
    # the key is in no URL and in no cookie a script can read; the session cookie is HttpOnly
    assert srv.api_key not in page.url
    assert "fonana_admin" not in page.evaluate("() => document.cookie")
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["fonana_admin"]["httpOnly"] and cookies["fonana_admin"]["sameSite"] == "Strict"
    assert srv.api_key not in cookies["fonana_admin"]["value"]

    # publish (bounded: at most 300 events, 60 s) until the page has plotted deliveries
    stop = threading.Event()

    def publish():
        for n in range(300):
            if stop.wait(0.2):
                return
            srv.publish({"event": {"type": "creator_updated", "creatorId": creator, "data": {"n": n}}})

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        before = len(page_state(page)["t"])
        wait_until(lambda: max(page_state(page)["deliveries"], default=0) > 0
                   and max(page_state(page)["publishes"], default=0) > 0, timeout=60, what="rates plotted")
    finally:
        stop.set()
        publisher.join(10)
    state = page_state(page)
    assert len(state["t"]) > before and max(state["connections"]) >= 3
    assert page.inner_text("#total-connections") != "–"
    assert page.locator("#workers tbody tr").count() == 1

    # the user inspector: look the fan up, disconnect from the page: their socket closes 4010
    page.fill("#user-id", fan)
    page.click("#user-form button")
    page.wait_for_function("() => window.fonanaAdmin.user && window.fonanaAdmin.user.connections.length === 1")
    assert page.locator("#user-connections tbody tr").count() == 1
    page.click("#user-disconnect")
    assert clients[fan].expect_closed() == 4010
    # revoke another user's tokens from the page: 4011
    page.fill("#user-id", banned)
    page.click("#user-form button")
    page.wait_for_function(f"() => window.fonanaAdmin.user && window.fonanaAdmin.user.userId === '{banned}'")
    page.click("#user-revoke")
    assert clients[banned].expect_closed() == 4011
    # the channel inspector: only the watcher is left on the creator's channel
    key = f"creator_{creator}"
    page.fill("#channel-key", key)
    page.click("#channel-form button")
    page.wait_for_function("() => window.fonanaAdmin.channel !== null")
    wait_until(lambda: page_state(page)["channel"]["users"] == [watcher] or page.click("#channel-form button"),
               timeout=10, what="channel inspector shows the watcher alone")
    assert clients[watcher].is_open          # the others were not touched
    assert srv.api_key not in srv.output()


def test_the_data_needs_a_session_and_actions_need_the_header(browser, srv):
    assert srv.get("/admin/data/overview").status_code == 401
    r = srv.http.post(srv.base_url + "/admin/data/disconnect", json={"userId": "u1"}, timeout=10)
    assert r.status_code == 401
    r = srv.http.post(srv.base_url + "/admin/login", data={"key": "wrong"}, timeout=10, allow_redirects=False)
    assert r.status_code == 401 and "set-cookie" not in {k.lower() for k in r.headers}
    r = srv.http.post(srv.base_url + "/admin/login", data={"key": srv.api_key}, timeout=10, allow_redirects=False)
    assert r.status_code == 303
    cookie = r.cookies.get("fonana_admin")
    assert cookie and srv.api_key not in cookie
    # a cross-site form cannot send the header: without it, nothing is done
    r = srv.http.post(srv.base_url + "/admin/data/disconnect", json={"userId": "u1"}, timeout=10,
                      cookies={"fonana_admin": cookie})
    assert r.status_code == 403
    r = srv.http.get(srv.base_url + "/admin/data/overview", timeout=10, cookies={"fonana_admin": cookie})
    assert r.status_code == 200 and r.json()["totals"]["connections"] >= 0
    assert "script-src 'self'" in srv.get("/admin").headers["Content-Security-Policy"]
    assert srv.get("/admin/static/vendor/uplot-1.6.32/uPlot.iife.min.js").status_code == 200
