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
    # the project's issue tracker is not part of the repository either
    assert not re.findall(r"\bissue \d+", text, re.I), re.findall(r".{40}\bissue \d+.{0,20}", text, re.I)


def test_protocol_md_shows_the_recover_command_and_every_reason_recovery_can_fail():
    from fonana_realtime import history
    text = PROTOCOL.read_text()
    assert re.search(r'`\{"type":"recover","stream":"user_U","since":\{"offset":N,"epoch":E\}\}`', text)
    assert re.search(r'`\{"type":"recovered","data":\{[^`]*"recovered":true\}\}`, or `"recovered":false,"reason":WHY`',
                     text)
    reasons = {history.EPOCH, history.TRIMMED, history.EXPIRED, history.TOO_MANY, history.AHEAD, history.UNAVAILABLE}
    why = re.search(r"`WHY` is one of ([^;]*);", text)
    assert why and set(re.findall(r"`(\w+)`", why.group(1))) == reasons, why and why.group(1)


# ---- README: the first minutes, as written (issue 24) -------------------------------------------

README = REPO / "README.md"
# What a fresh clone lacks: made by a run, or a developer's own (the clone gets none of them).
NOT_IN_A_CLONE = {"data", "logs", ".env", ".git", ".pytest_cache", ".hypothesis"}


def readme_section(title: str) -> str:
    return README.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def _walkthrough_script(clone: Path, out: Path, isolated: bool) -> str:
    """`make run` as the README's first block has it, then the "Try it" block verbatim: its
    first part (token and client) in the background as "another shell", the part after
    `# in a third shell` once the client has had its pong."""
    first = sh_blocks(README.read_text())[0]
    run = re.search(r"^(make run)\b", first, re.M).group(1)
    block = sh_blocks(readme_section("Try it"))[0]
    client_part, sep, third = block.partition("# in a third shell")
    assert sep, "the Try it block no longer has its `# in a third shell` part"
    lines = [
        "set -u",
        "trap 'kill 0' EXIT",                 # everything this script started, the server included
        "ip link set lo up" if isolated else ":",
        f"cd {clone}",
        f"{run} > {out}/server.log 2>&1 &",
        "curl -s -o /dev/null --retry 120 --retry-connrefused --retry-delay 1 --retry-max-time 180 "
        "localhost:3002/health || { echo 'make run did not answer on :3002'; exit 3; }",
        f"( {client_part}\n) > {out}/client.out 2> {out}/client.err &",
        f"timeout 60 grep -q -m1 '\"type\":\"pong\"' <(tail -n +1 -F {out}/client.out 2>/dev/null) "
        "|| { echo 'the client printed no pong'; exit 4; }",
        f"( {sep}{third}\n) > {out}/curl.out 2>&1",
        f"timeout 60 grep -q -m1 'Someone liked your post' <(tail -n +1 -F {out}/client.out 2>/dev/null) "
        "|| { echo 'the client printed no notification'; exit 5; }",
        "echo walkthrough-done",
    ]
    return "\n".join(lines) + "\n"


def _port_free(port: int) -> bool:
    import socket
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_the_readme_try_it_walkthrough_runs_as_written(tmp_path):
    """A fresh clone (the repository's files, no data/ logs/ .env), `make run`, and the
    "Try it" commands word for word: the client gets the welcome, its subscriptions, the
    refusal of the forbidden channel, and both events the curl commands inject."""
    import json
    import os
    import shutil
    import subprocess

    from support.server import clean_env, kill_session
    clone, out = tmp_path / "clone", tmp_path / "out"
    clone.mkdir()
    out.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in NOT_IN_A_CLONE:
            (clone / entry.name).symlink_to(entry)
    # port 3002 and localhost as the README says them: in a network namespace of its own
    # when this runs as root (nothing else on the machine can hold the port there)
    isolated = os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip")
    if not isolated and not _port_free(3002):
        pytest.skip("port 3002 is taken and no network namespace can be made (needs root and unshare)")
    script = tmp_path / "walkthrough.sh"
    script.write_text(_walkthrough_script(clone, out, bool(isolated)))
    command = (["unshare", "--net", "--fork"] if isolated else []) + ["bash", str(script)]
    proc = subprocess.Popen(command, cwd=clone, env=clean_env({}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        said, _ = proc.communicate(timeout=420)
    finally:
        kill_session(proc)

    def show(name):
        path = out / name
        return path.read_text(errors="replace")[-3000:] if path.is_file() else "(none)"

    context = (f"script said: {said[-2000:]}\nserver.log: {show('server.log')}\nclient.out: {show('client.out')}\n"
               f"client.err: {show('client.err')}\ncurl.out: {show('curl.out')}")
    assert "walkthrough-done" in said, context
    frames = [json.loads(l) for l in (out / "client.out").read_text().splitlines() if l.startswith("{")]
    kinds = [f.get("type") for f in frames]
    assert kinds[0] == "connected" and frames[0]["data"]["userId"] == "demo-fan", context
    keys = [f["data"]["channelKey"] for f in frames if f.get("type") == "subscribed"]
    assert keys == ["notifications_demo-fan", "post_demo-locked-post"], context
    assert [f["data"]["code"] for f in frames if f.get("type") == "error"] == ["access_denied"], context
    assert {"type": "post_liked", "postId": "demo-locked-post", "userId": "demo-creator", "likesCount": 5} in frames
    notes = [f for f in frames if f.get("type") == "notification"]
    assert notes and notes[0]["notification"]["type"] == "LIKE_POST", context
    answers = [json.loads(l) for l in (out / "curl.out").read_text().splitlines() if l.startswith("{")]
    assert answers[0]["published"] == 1 and answers[1]["type"] == "LIKE_POST", context
    assert "Traceback" not in show("client.err"), context


def test_every_variable_the_try_it_block_sets_is_used_in_it():
    block = sh_blocks(readme_section("Try it"))[0]
    for name in re.findall(r"^([A-Z_]+)=", block, re.M):
        assert re.search(rf"\${{?{name}\b", block), f"README Try it sets {name} and never uses it"


def test_the_testing_section_names_every_variable_the_suite_reads():
    """What points the suite elsewhere (tests/ and scripts/run-tests) is in README "Testing"."""
    section = readme_section("Testing")
    sources = [*(REPO / "tests").rglob("*.py"), REPO / "scripts" / "run-tests"]
    read = set()
    for path in sources:
        text = path.read_text()
        read |= set(re.findall(r"""os\.environ\.get\(\s*["']([A-Z][A-Z0-9_]+)["']""", text))
        if path.suffix != ".py":
            read |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)[:}]", text))
    read -= {"PY"}                                   # the Makefile's own hand-over of the venv's Python
    assert {"FONANA_TEST_PG_ADMIN_URL", "FONANA_TEST_REDIS_URL", "PYTEST_ARGS", "JS_TESTS"} <= read, read
    missing = sorted(name for name in read if f"`{name}`" not in section)
    assert not missing, f"README Testing does not name {missing}"
    for needed in ("root", "apt", "nginx", "chromium", "nodejs", "npm", "make test", "-k "):
        assert needed in section, f"README Testing does not say {needed!r}"


def test_protocol_md_refers_only_to_its_own_sections():
    text = PROTOCOL.read_text()
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, re.M))
    refs = {m.group(1) for m in re.finditer(r"(?<!\.md )\bsections? (\d+(?:\.\d+)?)", text)}
    assert refs and not refs - headings, f"docs/PROTOCOL.md names sections it does not have: {refs - headings}"
