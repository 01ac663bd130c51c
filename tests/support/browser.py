"""A real browser for the suite: headless Chromium (the Debian package, installed by
scripts/ensure-services) driven by Playwright, and the test page that behaves like the
Fonana client (tests/browser/fonana_client.html).

Playwright's own browser downloads are not used: it launches the system Chromium with
`executable_path`. The page is served over HTTP from tests/browser by a small threaded
server, so it has a real origin like the production client.
"""
from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path
from urllib.parse import urlencode

from .server import free_port

PAGES = Path(__file__).resolve().parents[1] / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class PageServer:
    """Serves tests/browser on 127.0.0.1 for the browser."""

    def __init__(self):
        self.port = free_port()
        handler = functools.partial(_Quiet, directory=str(PAGES))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, page: str, **query) -> str:
        return f"http://127.0.0.1:{self.port}/{page}?{urlencode(query)}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class FonanaPage:
    """One tab running the Fonana-like client; reads what its app shows."""

    def __init__(self, page):
        self.page = page

    def wait(self, condition_js: str, what: str, timeout: float = 15.0):
        """Await a condition on `window.fonana` (a JS expression over `f`)."""
        try:
            self.page.wait_for_function(f"() => {{ const f = window.fonana; return f && ({condition_js}); }}",
                                        timeout=timeout * 1000)
        except Exception as exc:
            if type(exc).__name__ != "TimeoutError":
                raise
            state = self.state()
            summary = {"opens": state["opens"], "closes": state["closes"], "gaveUp": state["gaveUp"],
                       "likes": state["likes"], "notifications": state["notifications"],
                       "received": [(m["type"], t - state["times"][0]) for m, t in zip(state["raw"], state["times"])],
                       "dropped": [m["type"] for m in state["dropped"]]}
            raise AssertionError(f"the page never showed {what} within {timeout}s; page: "
                                 f"{json.dumps(summary)[:4000]}") from None

    def wait_subscribed(self, count: int, opens: int = 1, timeout: float = 15.0):
        """The `opens`-th connection of the tab has `count` channels subscribed."""
        self.wait(f"f.opens >= {opens} && f.raw.filter(m => m.type === 'subscribed').length >= {count * opens}",
                  f"{count} subscriptions on open #{opens}", timeout)

    def state(self) -> dict:
        return self.page.evaluate("() => window.fonana")

    def likes(self) -> dict[str, int]:
        """The like counts the page shows, read from the DOM."""
        return {el.get_attribute("data-post"): int(el.text_content())
                for el in self.page.query_selector_all("#likes li")}

    def notifications(self) -> list[str]:
        return [el.get_attribute("data-id") for el in self.page.query_selector_all("#notifications li")]


class Browser:
    """One headless Chromium for a test module; `open` gives a fresh tab (own context)."""

    def __init__(self):
        from playwright.sync_api import sync_playwright
        self.pages = PageServer()
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        self._contexts = []

    def open(self, ws_url: str, token: str, channels=()) -> FonanaPage:
        context = self.browser.new_context()
        self._contexts.append(context)
        page = context.new_page()
        page.goto(self.pages.url("fonana_client.html", ws=ws_url, token=token, channels=json.dumps(list(channels))))
        return FonanaPage(page)

    def tab(self, url: str):
        """A fresh tab (own context: no cookies shared) at `url`; the Playwright page."""
        context = self.browser.new_context()
        self._contexts.append(context)
        page = context.new_page()
        page.goto(url)
        return page

    def close_tabs(self):
        while self._contexts:
            self._contexts.pop().close()

    def close(self):
        self.close_tabs()
        self.browser.close()
        self._pw.stop()
        self.pages.close()
