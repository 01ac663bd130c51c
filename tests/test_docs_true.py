"""The docs and comments say what the code does (issue 8.5, "docs that contradict the code").

Checked mechanically where it can be: every module has its line in ARCHITECTURE.md, every
file the docs name is in the repository, the test support never reaches outside it (CI
runs a clean clone), and the close echo the connection's comment describes is what a
client gets.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from support.rawws import OP_CLOSE

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fonana_realtime"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_module_has_its_line_in_architecture():
    table = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    modules = [p for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    packages = [p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    missing = [p.name for p in modules if p.name not in table] + \
              [p.name + "/" for p in packages if f"{p.name}/" not in table]
    assert not missing, f"docs/ARCHITECTURE.md does not name {missing}"


def test_every_file_the_docs_name_is_in_the_repository():
    names = set()
    for doc in DOCS:
        for quoted in re.findall(r"`([^`\s]+\.(?:py|sql|conf|service|md|txt|example))`", doc.read_text()):
            names.add((doc.name, quoted))
    in_repo = {p.relative_to(REPO).as_posix() for p in REPO.rglob("*")
               if p.is_file() and ".venv" not in p.parts and ".git" not in p.parts}
    basenames = {Path(p).name for p in in_repo}
    missing = sorted((doc, name) for doc, name in names
                     if name not in in_repo and Path(name).name not in basenames
                     and not name.startswith(("/etc/", "/opt/", "../")))
    assert not missing, f"files named in the docs but not in the repository: {missing}"


def test_the_test_support_reads_nothing_outside_the_repository():
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"""Path\(\s*["']/(?:work|home|root|opt|srv)/""", line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders


@pytest.mark.postgres
@pytest.mark.parametrize("payload,echo", [(b"", 1000), (b"\x0f\xa0", 4000), (b"\x03\xe8bye", 1000)],
                         ids=["no_code_1005", "4000", "1000_with_reason"])
def test_the_close_echo_is_what_connection_py_says(server, seed, payload, echo):
    """connection.py: the client's code is echoed; a close without one (1005) gets 1000."""
    from support.hardening import raw_connect
    raw = raw_connect(server, server.token(seed.user()))
    try:
        raw.send_frame(OP_CLOSE, payload)
        assert raw.close_code() == echo
    finally:
        raw.close()


# ---- docs/PROTOCOL.md stands on its own (issue 24) ---------------------------------------------

PROTOCOL = REPO / "docs" / "PROTOCOL.md"


def test_protocol_md_points_at_nothing_outside_the_repository_and_talks_to_its_reader():
    text = PROTOCOL.read_text()
    outside = [p for p in re.findall(r"\.\./[\w./-]+|/work/[\w./-]+|shared/PROTOCOL\.md", text)
               if p != "../.env"]           # the server reads ../.env (section 1): a setting, not a pointer
    assert not outside, f"docs/PROTOCOL.md points outside the repository: {outside}"
    # Sentences addressed to whoever implements the server, not to a user of it.
    for phrase in ("issue note", "ours to design", "keep them byte", "the contract", "write it into"):
        assert phrase not in text, f"docs/PROTOCOL.md still says {phrase!r}"


def test_protocol_md_shows_the_recover_command_and_every_reason_recovery_can_fail():
    from fonana_realtime import history
    text = PROTOCOL.read_text()
    assert re.search(r'`\{"type":"recover","stream":"user_U","since":\{"offset":N,"epoch":E\}\}`', text)
    assert re.search(r'`\{"type":"recovered","data":\{[^`]*"recovered":true\}\}`, or `"recovered":false,"reason":WHY`',
                     text)
    reasons = {history.EPOCH, history.TRIMMED, history.EXPIRED, history.TOO_MANY, history.AHEAD, history.UNAVAILABLE}
    why = re.search(r"`WHY` is one of ([^;]*);", text)
    assert why and set(re.findall(r"`(\w+)`", why.group(1))) == reasons, why and why.group(1)
