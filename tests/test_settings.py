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


@pytest.mark.parametrize("knob", [k for k in KNOBS if getattr(k.metadata["parse"], "parses", k.metadata["parse"])
                                  in (whole, number, flag)],
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


@pytest.mark.parametrize("production", [False, True], ids=["embedded", "production"])
def test_defaults_are_the_dataclass_defaults(tmp_path, production):
    """Nothing set: every knob holds the default written in its one declaration (on the
    embedded default, its `embedded` one where it has one)."""
    loaded = load_settings({**base(tmp_path), **({"NODE_ENV": "production"} if production else {})})
    for knob in KNOBS:
        if knob.name == "data_dir":
            continue
        expected = knob.default if production else knob.metadata.get("embedded", knob.default)
        assert getattr(loaded, knob.name) == expected, knob.metadata["env"]


def test_the_embedded_default_binds_this_machine_only_unless_ws_host_says_otherwise(tmp_path):
    assert load_settings({"DATA_DIR": str(tmp_path)}).host == "127.0.0.1"
    assert load_settings({"DATA_DIR": str(tmp_path), "WS_HOST": " "}).host == "127.0.0.1"
    assert load_settings({"DATA_DIR": str(tmp_path), "WS_HOST": "0.0.0.0"}).host == "0.0.0.0"
    assert load_settings({**base(tmp_path), "DATABASE_URL": "postgresql://h/db"}).host == "0.0.0.0"
    assert load_settings({**base(tmp_path), "NODE_ENV": "production"}).host == "0.0.0.0"


def test_log_format_is_text_or_json(tmp_path):
    assert load_settings(base(tmp_path)).log_format is None           # unset: logs.console_format decides
    assert load_settings({**base(tmp_path), "LOG_FORMAT": "TEXT"}).log_format == "text"
    with pytest.raises(SettingsError, match=r"^LOG_FORMAT must be one of text, json, got 'xml'$"):
        load_settings({**base(tmp_path), "LOG_FORMAT": "xml"})


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


# -- weak secrets (issue 8.2) ------------------------------------------------------------------

def production(tmp_path, **env) -> dict:
    return {"DATA_DIR": str(tmp_path), "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", **env}


@pytest.mark.parametrize("name", ["JWT_SECRET", "NEXTAUTH_SECRET"])
@pytest.mark.parametrize("weak", [" ", "a", "x" * 31, "é" * 15])
def test_production_refuses_a_jwt_secret_under_32_bytes(tmp_path, name, weak):
    with pytest.raises(SettingsError) as caught:
        load_settings(production(tmp_path, **{name: weak, "WS_API_SECRET": "k" * 32}))
    message = str(caught.value)
    assert name in message and "32 bytes" in message and "\n" not in message, message
    assert len(weak) < 8 or weak not in message, "the refusal must not repeat the secret"


def test_production_accepts_32_bytes_and_counts_bytes_not_characters(tmp_path):
    assert load_settings(production(tmp_path, JWT_SECRET="x" * 32)).jwt_secrets == ("x" * 32,)
    assert load_settings(production(tmp_path, JWT_SECRET="é" * 16)).jwt_secrets == ("é" * 16,)


@pytest.mark.parametrize("weak", ["k", " " * 5, "k" * 31])
def test_production_refuses_an_api_key_under_32_characters(tmp_path, weak):
    with pytest.raises(SettingsError, match=r"^WS_API_SECRET shorter than 32 characters"):
        load_settings(production(tmp_path, JWT_SECRET="j" * 32, WS_API_SECRET=weak))
    assert load_settings(production(tmp_path, JWT_SECRET="j" * 32, WS_API_SECRET="k" * 32)).api_secret == "k" * 32


def test_the_escape_hatch_accepts_a_weak_jwt_secret_with_a_warning(tmp_path):
    loaded = load_settings(production(tmp_path, NEXTAUTH_SECRET="s3cr3t", WS_ALLOW_WEAK_JWT_SECRET="1"))
    assert loaded.jwt_secrets == ("s3cr3t",)
    assert any("WS_ALLOW_WEAK_JWT_SECRET" in w and "NEXTAUTH_SECRET" in w for w in loaded.warnings), loaded.warnings
    assert not any("s3cr3t" in w for w in loaded.warnings)
    # only for the JWT secret: the API key has no escape hatch
    with pytest.raises(SettingsError, match="WS_API_SECRET"):
        load_settings(production(tmp_path, JWT_SECRET="short", WS_API_SECRET="k", WS_ALLOW_WEAK_JWT_SECRET="1"))
    with pytest.raises(SettingsError, match="WS_ALLOW_WEAK_JWT_SECRET must be 1 or 0"):
        load_settings(production(tmp_path, JWT_SECRET="short", WS_ALLOW_WEAK_JWT_SECRET="maybe"))
    with pytest.raises(SettingsError):
        load_settings(production(tmp_path, JWT_SECRET="short", WS_ALLOW_WEAK_JWT_SECRET="0"))


def test_the_embedded_default_makes_strong_secrets(tmp_path):
    loaded = load_settings({"DATA_DIR": str(tmp_path)})
    assert len(loaded.jwt_secrets[0].encode()) >= 32 and len(loaded.api_secret) >= 32
    # what it made passes the production floors too
    load_settings(production(tmp_path, JWT_SECRET=loaded.jwt_secrets[0], WS_API_SECRET=loaded.api_secret))


def test_the_embedded_default_warns_about_weak_explicit_secrets(tmp_path):
    loaded = load_settings({"DATA_DIR": str(tmp_path), "JWT_SECRET": "a", "WS_API_SECRET": "k"})
    assert loaded.jwt_secrets == ("a",)
    assert any("JWT_SECRET and WS_API_SECRET shorter" in w for w in loaded.warnings), loaded.warnings


@pytest.mark.postgres
@pytest.mark.parametrize("env,named", [({"JWT_SECRET": None, "NEXTAUTH_SECRET": " "}, "NEXTAUTH_SECRET"),
                                       ({"WS_API_SECRET": "k"}, "WS_API_SECRET")],
                         ids=["nextauth-space", "api-key-k"])
def test_the_production_launch_refuses_weak_secrets_with_one_line(server_factory, pg_url, env, named):
    srv = server_factory.create("weak-secret", database_url=pg_url, env=env)
    srv.start(wait=False)
    rc = srv.wait_exit(30)
    out = srv.output()
    assert rc is not None and rc != 0, f"started with a weak {named}:\n{srv.output_tail()}"
    refusal = [line for line in out.splitlines() if "refusing to start" in line]
    assert len(refusal) == 1 and named in refusal[0], out[-2000:]
    assert "Traceback" not in out, out[-3000:]


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")   # the point of the test
def test_the_escape_hatch_warns_at_every_start(server_factory, pg_url, seed):
    weak = "weak-nextauth"
    user = seed.user()
    for n in (1, 2):
        srv = server_factory.start(f"weak-allowed-{n}", database_url=pg_url, nextauth_secret=weak,
                                   env={"JWT_SECRET": None, "WS_ALLOW_WEAK_JWT_SECRET": "1"})
        srv.jwt_secret = weak
        ws = srv.connect(user)        # the weak secret the Next.js app signs with works
        ws.ping()
        srv.stop()
        warnings = [line for line in srv.output().splitlines() if "WS_ALLOW_WEAK_JWT_SECRET=1" in line]
        assert warnings, f"start {n} did not warn:\n{srv.output_tail()}"


def test_log_level_is_one_of_four_words(tmp_path):
    assert load_settings(base(tmp_path)).log_level == "info"
    assert load_settings({**base(tmp_path), "LOG_LEVEL": "DEBUG"}).log_level == "debug"
    with pytest.raises(SettingsError) as err:
        load_settings({**base(tmp_path), "LOG_LEVEL": "verbose"})
    assert "LOG_LEVEL" in str(err.value) and "\n" not in str(err.value)


# -- every setting's range and scheme (issue 18.9) ------------------------------------------------

# One value out of range (or of a scheme nobody reads) per setting; flags and word lists are
# exhaustive already (test above, test_log_level_is_one_of_four_words).
OUT_OF_RANGE = {
    "WS_HOST": "not a host!", "WS_PORT": "99999", "DATABASE_URL": "mysql://u@db/fonana",
    "REDIS_URL": "http://127.0.0.1:6379", "REDIS_PREFIX": "fonana:{rt}:", "ALLOWED_ORIGINS": "https://fonana.me/",
    "DATA_DIR": "a\0b", "LOG_DIR": "a\0b", "WS_WORKERS": "0", "WS_WORKER_CONNECTIONS": "0",
    "WS_PING_INTERVAL": "-5", "WS_MAX_MESSAGE_BYTES": "10", "WS_RATE_PER_SEC": "0", "WS_RATE_BURST": "0",
    "WS_RATE_ABUSE_SECONDS": "-1", "WS_MAX_SUBSCRIPTIONS": "0", "WS_MAX_CONNECTIONS_PER_USER": "-3",
    "WS_HANDSHAKES_PER_IP_PER_SEC": "-1", "WS_HANDSHAKES_PER_IP_BURST": "-1", "TRUSTED_PROXIES": "10.0.0.0/33",
    "WS_SEND_BACKLOG_BYTES": "0", "WS_SEND_BACKLOG_FRAMES": "0", "WS_DRAIN_SECONDS": "nan",
    "API_MAX_BODY_BYTES": "-1", "API_MAX_EVENTS": "0", "DB_POOL_SIZE": "0", "WS_USER_CACHE_SECONDS": "inf",
    "WS_JWT_LEEWAY_SECONDS": "31", "WS_LEGACY_TYPE_GAP_MS": "-1", "WS_RESUME_SECONDS": "-120", "WS_RESUME_MAX_MARKS": "0",
    "WS_PUSH_MATCH_SECONDS": "-1", "WS_REVOCATION_SECONDS": "5",
    "WS_HISTORY_SIZE": "-1", "WS_HISTORY_SECONDS": "0", "WS_HISTORY_META_SECONDS": "1",
    "WS_RECOVERY_MAX": "-1", "LOG_FORMAT": "xml", "WS_HISTORY_MAX_STREAMS": "0", "WS_HISTORY_MAX_BYTES": "1000",
}
EXHAUSTIVE = (flag,)


def test_every_setting_has_a_value_it_refuses():
    """A new knob needs its range: add it to OUT_OF_RANGE (and give it a bounded parser)."""
    checked = {k.metadata["env"] for k in KNOBS
               if k.metadata["parse"] not in EXHAUSTIVE and k.metadata["env"] != "LOG_LEVEL"}
    assert checked == set(OUT_OF_RANGE), checked ^ set(OUT_OF_RANGE)


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_a_value_out_of_range_is_a_one_line_refusal(tmp_path, name):
    with pytest.raises(SettingsError) as caught:
        load_settings({**base(tmp_path), name: OUT_OF_RANGE[name]})
    message = str(caught.value)
    assert message.startswith(name) and "\n" not in message, message


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://h:6380", "unix:///run/redis.sock",
                                 "redis+sentinel://:pw@h1:26379,h2:26379/mymaster",
                                 "redis+cluster://:pw@h1:7000,h2:7001"])
def test_every_redis_topology_scheme_is_accepted(tmp_path, url):
    assert load_settings({**base(tmp_path), "REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("url,said", [
    ("redis+sentinel://h1:26379,h2:26379", "the master's name is missing"),
    ("redis+sentinel://h1/mymaster", "each sentinel must be host:port"),
    ("redis+cluster://h1,h2:7001", "each node must be host:port"),
    ("redis+cluster://h1:7000/3", "a cluster has only database 0"),
])
def test_a_redis_url_the_server_cannot_use_is_refused_in_one_line(tmp_path, url, said):
    with pytest.raises(SettingsError, match="^REDIS_URL: .*" + said.replace("+", "\\+")):
        load_settings({**base(tmp_path), "REDIS_URL": url})


def test_the_edges_of_the_ranges_are_accepted(tmp_path):
    loaded = load_settings({**base(tmp_path), "WS_PORT": "65535", "WS_PING_INTERVAL": "0.5",
                            "WS_HANDSHAKES_PER_IP_PER_SEC": "0", "WS_RESUME_SECONDS": "0",
                            "WS_HISTORY_SIZE": "0", "ALLOWED_ORIGINS": "https://fonana.me, http://localhost:3000",
                            "TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8, ::1", "WS_HOST": "::",
                            "DATABASE_URL": "postgres://u@127.0.0.1/db"})
    assert (loaded.port, loaded.ping_interval, loaded.trusted_proxies[1]) == (65535, 0.5, "10.0.0.0/8")


def test_history_meta_must_outlive_the_history(tmp_path):
    with pytest.raises(SettingsError, match="WS_HISTORY_META_SECONDS must be at least WS_HISTORY_SECONDS"):
        load_settings({**base(tmp_path), "WS_HISTORY_SECONDS": "600", "WS_HISTORY_META_SECONDS": "300"})


@pytest.mark.parametrize("name,value,said", [
    ("WS_PING_INTERVAL", "-5", "WS_PING_INTERVAL must be between 0.1 and 3600, got -5"),
    ("DATABASE_URL", "mysql://root@127.0.0.1/fonana", "DATABASE_URL must start with postgresql:// or postgres://"),
    ("REDIS_URL", "http://127.0.0.1:6379", "REDIS_URL must start with redis://"),
    ("WS_PORT", "99999", "WS_PORT must be between 1 and 65535, got 99999"),
])
def test_the_launch_refuses_a_bad_setting_with_one_line_before_any_worker(server_factory, name, value, said):
    srv = server_factory.create(f"bad-{name.lower()}", env={name: value})
    srv.start(wait=False)
    rc = srv.wait_exit(30)
    out = srv.output()
    assert rc is not None and rc != 0, f"started with {name}={value}"
    assert f"refusing to start: {said}" in out, out[-2000:]
    assert "Traceback" not in out and "Booting worker" not in out, out[-3000:]
