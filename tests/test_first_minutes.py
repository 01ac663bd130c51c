"""What a newcomer meets first (issue 24), with real gunicorn launches: where the embedded
default listens and what it says at start, the console's log format (LOG_FORMAT), and
`make test` running both halves and reporting both."""
from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import socket
import subprocess
import time
from pathlib import Path

import jwt
import pytest

from support.server import REPO, Server, clean_env, kill_session

TRY_IT = re.compile(r"try it: TOKEN=\$\((?P<token>[^)]+)\)\s+KEY=\$\((?P<key>[^)]+)\)")
THIS_MACHINE_ONLY = "reachable from this machine only"


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (the kernel's own tables)."""
    found = set()
    for path, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            rows = Path(path).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:             # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, raw))
    return found


def messages(srv: Server) -> list[str]:
    """The `message` of every JSON line the master and workers wrote to stdout."""
    out = []
    for line in srv.stdout_path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line)["message"])
        except (ValueError, KeyError, TypeError):
            continue
    return out


# ---- where the embedded default listens --------------------------------------------------------

def test_the_embedded_default_listens_on_this_machine_only_and_says_so(server_factory):
    srv = server_factory.start("embedded-bind", database_url=None, jwt_secret=None, api_key=None,
                               env={"WS_HOST": None})
    assert listening_addresses(srv.port) == {"127.0.0.1"}, listening_addresses(srv.port)
    said = [m for m in messages(srv) if THIS_MACHINE_ONLY in m]
    assert len(said) == 1 and "WS_HOST=0.0.0.0" in said[0], messages(srv)


def test_ws_host_still_decides_on_the_embedded_default(server_factory):
    srv = server_factory.start("embedded-any", database_url=None, env={"WS_HOST": "0.0.0.0"})
    assert listening_addresses(srv.port) == {"0.0.0.0"}, listening_addresses(srv.port)
    assert not [m for m in messages(srv) if THIS_MACHINE_ONLY in m], messages(srv)


@pytest.mark.postgres
def test_production_keeps_listening_on_every_address_and_prints_no_dev_hints(server_factory, pg_url):
    srv = server_factory.start("production-bind", database_url=pg_url, env={"WS_HOST": None})
    assert listening_addresses(srv.port) == {"0.0.0.0"}, listening_addresses(srv.port)
    said = messages(srv)
    assert not [m for m in said if THIS_MACHINE_ONLY in m or "try it" in m], said


# ---- the start says how to get a token and the API key ----------------------------------------

def test_the_start_prints_once_the_two_commands_that_give_a_token_and_the_key(server_factory):
    srv = server_factory.start("embedded-hints", database_url=None, jwt_secret=None, api_key=None)
    hints = [m for m in messages(srv) if TRY_IT.search(m)]
    assert len(hints) == 1, messages(srv)
    commands = TRY_IT.search(hints[0])
    # run both as printed, from the repository, with the server's DATA_DIR
    env = clean_env({"DATA_DIR": srv.data_dir})
    token = subprocess.run(shlex.split(commands["token"]), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=30)
    assert token.returncode == 0, token.stderr
    token = token.stdout.strip()
    assert jwt.decode(token, options={"verify_signature": False})["userId"] == "demo-fan"
    key = subprocess.run(shlex.split(commands["key"]), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=30)
    assert key.returncode == 0, key.stderr
    ws = srv.connect("demo-fan", token=token)
    event = {"type": "feed_update", "userId": "demo-fan", "posts": []}
    assert srv.api("/api/events", {"event": event}, key=key.stdout.strip()).status_code == 202
    ws.expect_event(event)


# ---- LOG_FORMAT --------------------------------------------------------------------------------

def _is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_log_format_text_shows_people_lines_on_the_console_and_keeps_the_files_json(server_factory):
    srv = server_factory.start("log-text", database_url=None, env={"LOG_FORMAT": "text", "LOG_LEVEL": "debug"})
    ws = srv.connect("demo-fan")
    ws.close()
    srv.stop()
    console = [l for l in srv.stdout_path.read_text().splitlines() if l.strip()]
    assert console and not [l for l in console if _is_json(l)], console[:5]
    connected = [l for l in console if " connected" in l and "conn_id=" in l and "user_id=demo-fan" in l]
    assert connected, console
    for name in ("ws-combined.log", "ws-out.log"):
        lines = [l for l in (srv.log_dir / name).read_text().splitlines() if l.strip()]
        assert lines and all(_is_json(l) for l in lines), (name, lines[:3])
    assert any(json.loads(l).get("event") == "connected"
               for l in (srv.log_dir / "ws-combined.log").read_text().splitlines())
    text = srv.stdout_path.read_text()
    assert "eyJ" not in text and srv.jwt_secret not in text and srv.api_key not in text


def test_log_format_json_and_a_bad_value(server_factory):
    srv = server_factory.start("log-json", database_url=None, env={"LOG_FORMAT": "json"})
    console = [l for l in srv.stdout_path.read_text().splitlines() if l.strip()]
    assert console and all(_is_json(l) for l in console), console[:5]
    bad = server_factory.create("log-bad", database_url=None, env={"LOG_FORMAT": "xml"})
    bad.start(wait=False)
    assert bad.proc.wait(30) != 0
    assert "LOG_FORMAT must be one of text, json" in bad.output(), bad.output_tail()


def _first_lines_on_a_terminal(srv: Server, want: int = 4, timeout: float = 30.0) -> list[str]:
    """Start `srv`'s launch with stdout and stderr on a pseudo-terminal, as `make run` in a
    shell has them; the first `want` lines it prints there; then stop it."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(srv.command, cwd=srv.cwd, env=srv.env, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    buffer = b""
    try:
        deadline = time.monotonic() + timeout
        while buffer.count(b"\n") < want and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:          # the launch exited and closed the terminal
                break
            if not chunk:
                break
            buffer += chunk
    finally:
        kill_session(proc)
        os.close(master)
    lines = [l.strip() for l in buffer.decode(errors="replace").splitlines() if l.strip()]
    assert len(lines) >= want, lines
    return lines[:want]


def test_on_a_terminal_the_embedded_default_logs_text(server_factory):
    srv = server_factory.create("tty-embedded", database_url=None)
    lines = _first_lines_on_a_terminal(srv)
    assert not [l for l in lines if _is_json(l)], lines
    assert any("Listening at: http://127.0.0.1:" in l for l in lines), lines


@pytest.mark.postgres
def test_on_a_terminal_production_still_logs_json(server_factory, pg_url):
    srv = server_factory.create("tty-production", database_url=pg_url)
    lines = _first_lines_on_a_terminal(srv)
    assert all(_is_json(l) for l in lines), lines


# ---- make test: both halves, both results -----------------------------------------------------

PASSING_JS = 'import test from "node:test";\ntest("the js half ran", () => {});\n'
FAILING_JS = ('import test from "node:test";\nimport assert from "node:assert";\n'
              'test("the js half ran", () => { assert.fail("on purpose"); });\n')


def _make_test(tmp_path: Path, python_passes: bool, js_passes: bool) -> subprocess.CompletedProcess:
    py = tmp_path / "test_one.py"
    py.write_text(f"def test_one():\n    assert {python_passes}\n")
    js = tmp_path / "one.test.js"
    js.write_text(PASSING_JS if js_passes else FAILING_JS)
    return subprocess.run(["make", "-s", "test", f"PYTEST_ARGS={py} -p no:cacheprovider", f"JS_TESTS={js}"],
                          cwd=REPO, env=clean_env({}), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.postgres          # `make test` runs scripts/ensure-services
def test_make_test_runs_the_js_tests_when_pytest_fails_and_reports_both(tmp_path):
    result = _make_test(tmp_path, python_passes=False, js_passes=True)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert "the js half ran" in out, out[-3000:]
    assert "make test: pytest FAILED (exit 1); clients/js passed; lint passed; unit passed" in out, out[-3000:]


@pytest.mark.postgres
def test_make_test_fails_when_only_the_js_tests_fail(tmp_path):
    result = _make_test(tmp_path, python_passes=True, js_passes=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert re.search(r"make test: pytest passed; clients/js FAILED \(exit \d+\); lint passed; unit passed", out), \
        out[-3000:]


class _Stream:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("setting,production,tty,expected", [
    (None, False, True, "text"), (None, False, False, "json"), (None, True, True, "json"),
    ("json", False, True, "json"), ("text", True, False, "text")])
def test_console_format_follows_log_format_else_who_is_reading(setting, production, tty, expected):
    from fonana_realtime.logs import console_format
    assert console_format(setting, production, _Stream(tty)) == expected


# ---- make run on a fresh clone: what it installs, out loud --------------------------------------

def _make_plan(tmp_path: Path, target: str) -> list[str]:
    """What `make -n TARGET` would run in a clone that has no .venv yet."""
    clone = tmp_path / f"clone-{target}"
    clone.mkdir()
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt"):
        (clone / name).symlink_to(REPO / name)
    plan = subprocess.run(["make", "-n", target], cwd=clone, env=clean_env({}), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    return plan.stdout.splitlines()


def test_make_run_installs_the_runtime_set_and_says_so_with_pips_progress(tmp_path):
    plan = _make_plan(tmp_path, "run")
    installs = [l for l in plan if "pip install" in l]
    assert len(installs) == 1, plan
    words = shlex.split(installs[0])
    assert "-q" not in words and "--quiet" not in words, installs[0]
    assert words[-2:] == ["-r", "requirements.txt"], installs[0]            # not the test set
    said = [l for l in plan[:plan.index(installs[0])] if l.startswith("echo") and "installing" in l]
    assert said and "requirements.txt" in said[0], plan
    test_plan = _make_plan(tmp_path, "test")
    assert [l for l in test_plan if "pip install" in l and l.endswith("-r requirements-dev.txt")], test_plan
