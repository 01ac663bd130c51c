"""Run the project's CLI (`python -m fonana_realtime ...`) as a subprocess."""
from __future__ import annotations

import json
import subprocess
import sys

from .server import REPO, clean_env


def run_cli(args: list[str], env: dict | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fonana_realtime", *args], cwd=REPO, env=clean_env(env),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def json_objects(text: str) -> list:
    """Every JSON object printed on a line of `text` (a prefix before the first `{` is ignored)."""
    found = []
    for line in text.splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            found.append(json.loads(line[start:]))
        except ValueError:
            continue
    return found
