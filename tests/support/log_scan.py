"""A pytest plugin that scans every log line the suite produced for tokens and secrets.

Registered by tests/test_logs_no_secrets.py (`pytest_plugins`), so it is active whenever
that module is collected. It

* remembers every server the suite runs (tests/support/server.py keeps the running ones
  in `RUNNING`; they are looked at after each test's setup and before its teardown, while
  function-scoped servers still run) with its secrets and log paths;
* moves the suite-wide scan test to the very end of the run;
* scans again at session finish, after session-scoped servers have stopped and written
  their last lines, and fails the run if something leaked during teardown.

What counts as a log: every server's LOG_DIR files and captured stdout/stderr, and every
`stdout.txt`, `stderr.txt` and `*.log` under the session's temp directory (nginx logs too).
What counts as a leak: a JWT-shaped string (`eyJ...` header.payload: every token the
suite mints is one), any secret a server ran with (JWT_SECRET, NEXTAUTH_SECRET,
WS_API_SECRET, the embedded default's dev secrets), a `token=` or `Bearer ` followed by
anything but `[redacted]`, and a `/ws` request with a query string.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .server import RUNNING

SCAN_TEST_NAME = "test_no_log_line_of_the_whole_suite_holds_a_token_or_secret"
MIN_SECRET_LEN = 8        # shorter values would match ordinary words

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}")
_TOKEN_PARAM = re.compile(r"token=(?!\[redacted\])[^&\s\"',;]+")
_BEARER = re.compile(r"[Bb]earer\s+(?!\[redacted\])[^\s\"',;]+")
_WS_QUERY = re.compile(r"(?<![\w/.:])/(?:ws)?\?[^\s\"]+")


@dataclass
class ServerRecord:
    name: str
    files: list[Path]
    log_dir: Path
    secrets: dict[str, str] = field(default_factory=dict)


_servers: dict[str, ServerRecord] = {}
_state = {"scan_ran": False, "basetemp": None}


def _remember_running() -> None:
    for srv in list(RUNNING):
        key = str(srv.workdir)
        if key in _servers:
            continue
        secrets = {label: value for label, value in (("JWT_SECRET", srv.jwt_secret),
                                                     ("NEXTAUTH_SECRET", srv.nextauth_secret),
                                                     ("WS_API_SECRET", srv.api_key)) if value}
        _servers[key] = ServerRecord(srv.name, [srv.stdout_path, srv.stderr_path], srv.log_dir, secrets)


# -- hooks -------------------------------------------------------------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield
    _remember_running()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    _remember_running()
    yield


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    last = [it for it in items if it.name == SCAN_TEST_NAME]
    if last:
        items[:] = [it for it in items if it.name != SCAN_TEST_NAME] + last


def pytest_sessionfinish(session, exitstatus):
    if not _state["scan_ran"] or _state["basetemp"] is None:
        return
    leaks = scan(_state["basetemp"])
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "log lines written after the scan test (session teardown) hold tokens or secrets:\n" + \
            "\n".join(leaks[:50])
        if reporter is not None:
            reporter.write_sep("=", "log secrets scan (session finish)", red=True)
            reporter.write_line(text)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- the scan ----------------------------------------------------------------------------------

def log_files(basetemp: Path) -> list[Path]:
    found: set[Path] = set()
    for rec in _servers.values():
        found.update(p for p in rec.files if p.is_file())
        if rec.log_dir.is_dir():
            found.update(p for p in rec.log_dir.iterdir() if p.is_file())
    if basetemp.is_dir():
        for p in basetemp.rglob("*"):
            if p.is_file() and (p.name in ("stdout.txt", "stderr.txt") or p.suffix == ".log"):
                found.add(p)
    return sorted(found)


def known_secrets(basetemp: Path) -> dict[str, str]:
    """value -> where it came from."""
    out: dict[str, str] = {}
    for rec in _servers.values():
        for label, value in rec.secrets.items():
            out[value] = f"{label} of server {rec.name}"
    if basetemp.is_dir():
        for p in basetemp.rglob("dev-secrets.json"):
            try:
                for label, value in json.loads(p.read_text()).items():
                    if isinstance(value, str):
                        out[value] = f"dev {label} in {p.parent}"
            except (OSError, ValueError):
                continue
    return {v: why for v, why in out.items() if len(v) >= MIN_SECRET_LEN}


def _mask(s: str) -> str:
    return s[:6] + "…" if len(s) > 6 else "…"


def scan(basetemp: Path, extra_needles: dict[str, str] | None = None) -> list[str]:
    """Every leak as `file:line: what`, secrets masked in the message."""
    needles = known_secrets(basetemp)
    needles.update(extra_needles or {})
    leaks = []
    for path in log_files(basetemp):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            where = f"{path}:{n}"
            for m in _JWT.finditer(line):
                leaks.append(f"{where}: a JWT ({_mask(m.group(0))})")
            for m in _TOKEN_PARAM.finditer(line):
                leaks.append(f"{where}: a token= value ({_mask(m.group(0))})")
            for m in _BEARER.finditer(line):
                leaks.append(f"{where}: a Bearer value ({_mask(m.group(0))})")
            for m in _WS_QUERY.finditer(line):
                leaks.append(f"{where}: a query string on a WebSocket path ({_mask(m.group(0).strip())})")
            for value, why in needles.items():
                if value in line:
                    leaks.append(f"{where}: the {why} ({_mask(value)})")
    return leaks


def mark_scan_ran(basetemp: Path) -> None:
    _state["scan_ran"] = True
    _state["basetemp"] = basetemp


def servers_seen() -> int:
    return len(_servers)
