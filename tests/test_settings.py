"""Settings (PROTOCOL.md section 1): every knob is one declaration, every malformed value is
a one-line refusal, every member is used.

`load_settings` is pure logic over a dict, so most of this runs in-process; one test runs
the real launch to see the refusal an operator sees.
"""
from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

from fonana_realtime import settings as settings_module
from fonana_realtime.settings import DERIVED_FROM, KNOBS, Settings, SettingsError, flag, load_settings, number, whole

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fonana_realtime"
STRONG = {"JWT_SECRET": "j" * 32, "WS_API_SECRET": "k" * 32}


def base(tmp_path) -> dict:
    return {"DATA_DIR": str(tmp_path), **STRONG}


@pytest.mark.parametrize("knob", [k for k in KNOBS if k.metadata["parse"] in (whole, number, flag)],
                         ids=lambda k: k.metadata["env"])
def test_a_malformed_value_is_a_one_line_refusal_naming_the_variable(tmp_path, knob):
    name = knob.metadata["env"]
    with pytest.raises(SettingsError) as caught:
        load_settings({**base(tmp_path), name: "abc"})
    message = str(caught.value)
    assert name in message and "'abc'" in message and "\n" not in message, message


def test_ws_workers_abc_is_refused_like_every_other_number(tmp_path):
    with pytest.raises(SettingsError, match=r"^WS_WORKERS must be a whole number, got 'abc'$"):
        load_settings({**base(tmp_path), "WS_WORKERS": "abc"})
    assert load_settings({**base(tmp_path), "WS_WORKERS": " 3 "}).workers == 3
    assert load_settings({**base(tmp_path), "WS_WORKERS": ""}).workers is None


def test_defaults_are_the_dataclass_defaults(tmp_path):
    """Nothing set: every knob holds the default written in its one declaration."""
    loaded = load_settings(base(tmp_path))
    for knob in KNOBS:
        if knob.name == "data_dir":
            continue
        assert getattr(loaded, knob.name) == knob.default, knob.metadata["env"]


def test_every_variable_settings_reads_is_declared_once():
    """The environment names in settings.py are the knobs' (each once) plus the few the
    secrets and the production switch are derived from: no second list of defaults."""
    derived = set(DERIVED_FROM)
    names = [k.metadata["env"] for k in KNOBS]
    assert len(names) == len(set(names)), names
    source = (PACKAGE / "settings.py").read_text()
    quoted = set(re.findall(r"\"([A-Z][A-Z0-9_]{2,})\"", source))
    assert quoted - set(names) <= derived, sorted(quoted - set(names) - derived)
    for name in names:
        assert source.count(f'"{name}"') == 1, f"{name} is written more than once in settings.py"
    assert len(KNOBS) >= 25


def test_every_settings_member_is_used_outside_settings():
    used = set()
    for path in [*PACKAGE.rglob("*.py"), REPO / "gunicorn.conf.py"]:
        if path.name == "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                used.add(node.attr)
    members = {f.name for f in fields(Settings)} | {
        n for n, v in vars(Settings).items() if isinstance(v, property)}
    assert members - used == set(), f"Settings members nobody reads: {sorted(members - used)}"


def test_blank_log_dir_means_stdout_only(tmp_path):
    assert load_settings({**base(tmp_path), "LOG_DIR": ""}).log_dir == ""
    assert load_settings(base(tmp_path)).log_dir == "logs"


def test_leeway_bounds(tmp_path):
    assert load_settings({**base(tmp_path), "WS_JWT_LEEWAY_SECONDS": "30"}).jwt_leeway_seconds == 30
    for bad in ("31", "-1"):
        with pytest.raises(SettingsError, match="WS_JWT_LEEWAY_SECONDS must be between 0 and 30"):
            load_settings({**base(tmp_path), "WS_JWT_LEEWAY_SECONDS": bad})


def test_the_launch_refuses_ws_workers_abc_with_one_line(server_factory):
    srv = server_factory.create("bad-workers", env={"WS_WORKERS": "abc"})
    srv.start(wait=False)
    rc = srv.wait_exit(30)
    out = srv.output()
    assert rc is not None and rc != 0, "started with WS_WORKERS=abc"
    assert "refusing to start: WS_WORKERS must be a whole number, got 'abc'" in out, out[-2000:]
    assert "Traceback" not in out and "ValueError" not in out, out[-3000:]


def test_settings_module_reads_only_what_it_declares():
    # the module docstring names the other readers of os.environ; keep it true
    readers = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                     if "os.environ" in p.read_text() and p.name != "settings.py")
    doc = settings_module.__doc__
    for reader in readers:
        assert reader.split("/")[-1] in doc, f"settings.py's docstring does not name {reader}"
