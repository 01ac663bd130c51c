"""The operators' Prometheus files (issue 20): config/prometheus/ alert rules checked by
`promtool check rules` and their unit tests (`promtool test rules`: each alert fires on
the series it is meant for, and not before its `for`), and config/grafana/'s dashboard
naming only metrics the server exports. promtool comes with Debian's `prometheus`
package (scripts/ensure-services installs it); without it the promtool tests are skipped.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge, Histogram

from fonana_realtime import metrics

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "config" / "prometheus" / "fonana-realtime.rules.yml"
RULE_TESTS = REPO / "config" / "prometheus" / "fonana-realtime.rules.test.yml"
DASHBOARD = REPO / "config" / "grafana" / "fonana-realtime.json"

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool not installed (scripts/ensure-services)")


@needs_promtool
def test_rules_pass_promtool_check():
    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 6 rules found" in out.stdout + out.stderr


@needs_promtool
def test_each_alert_fires_on_its_series():
    out = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = set(re.findall(r"alert: (\w+)", RULES.read_text()))
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert alerts <= tested, f"alerts without a unit test: {alerts - tested}"


def exported_names() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names.add(value._name + "_total")
        elif isinstance(value, Histogram):
            names.update(value._name + s for s in ("_bucket", "_sum", "_count"))
        elif isinstance(value, Gauge):
            names.add(value._name)
    return names


def test_rules_and_dashboard_name_only_exported_metrics():
    exported = exported_names()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10 and all(p["targets"] for p in dashboard["panels"])
    for where, text in (("rules", RULES.read_text()), ("dashboard", "\n".join(exprs))):
        named = set(re.findall(r"fonana_rt_\w+", text))
        assert named and named <= exported, f"{where} names metrics the server does not export: {named - exported}"
