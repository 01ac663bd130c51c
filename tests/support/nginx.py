"""Run the project's nginx site file (config/nginx/fonana-realtime.conf) for real.

The site file is used as it ships: only its upstream port, its listen lines, its
certificate and its log paths are swapped (each swap must match, so a renamed directive
fails loudly), and it is included into a minimal nginx.conf under a temporary prefix,
with its snippet (config/nginx/snippets/) where its `include` finds it. nginx runs in the
foreground (`daemon off`), as a child of the test, on free 127.0.0.1 ports: one for the
first server block, one (TLS, a self-signed certificate made for the run) for the
app's port-3002 block.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import requests

from .server import REPO, free_port

SITE_CONF = REPO / "config" / "nginx" / "fonana-realtime.conf"
WS_SNIPPET = REPO / "config" / "nginx" / "snippets" / "fonana-realtime-ws.conf"


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _sub(pattern: str, repl, text: str, what: str, *, at_least: int = 1) -> str:
    new, n = re.subn(pattern, repl, text, flags=re.MULTILINE)
    if n < at_least:
        raise AssertionError(f"{SITE_CONF.name}: expected {what} (pattern {pattern!r}), found {n}")
    return new


def render_site(site_text: str, *, upstream_port: int, listen_port: int, log_dir: Path,
                tls_port: int, cert: Path, key: Path) -> str:
    """The site file with the test's ports, certificate and log paths; everything else untouched.

    The first plain `listen` becomes the test's HTTP port, the first `listen …:3002 ssl`
    (the app's layout) its TLS port; other listen lines (IPv6, the commented TLS ones)
    are dropped."""
    text = _sub(r"^(\s*server\s+127\.0\.0\.1:)3002(\s*;)", rf"\g<1>{upstream_port}\2", site_text,
                "the upstream `server 127.0.0.1:3002;`")
    taken = {"plain": False, "tls": False}

    def listen(m):
        tls = re.search(r":3002\s+ssl\b", m.group(0)) is not None
        kind = "tls" if tls else "plain"
        if taken[kind]:
            return f"{m.group(1)}# (test) dropped: {m.group(0).strip()}"
        taken[kind] = True
        return f"{m.group(1)}listen 127.0.0.1:{tls_port} ssl;" if tls else f"{m.group(1)}listen 127.0.0.1:{listen_port};"

    text = _sub(r"^(\s*)listen\s+[^;]+;", listen, text, "a `listen` line")
    if not taken["tls"]:
        raise AssertionError(f"{SITE_CONF.name}: no `listen …:3002 ssl;` (the Fonana app's wss://<host>:3002/ws)")
    text = _sub(r"^(\s*ssl_certificate\s+)[^;\s]+;", rf"\g<1>{cert};", text, "an `ssl_certificate` line")
    text = _sub(r"^(\s*ssl_certificate_key\s+)[^;\s]+;", rf"\g<1>{key};", text, "an `ssl_certificate_key` line")
    return render_logs(text, log_dir, at_least=2)


def render_logs(text: str, log_dir: Path, *, at_least: int = 1) -> str:
    return _sub(r"(\b(?:access|error)_log\s+)/var/log/nginx/([^\s;]+)", rf"\g<1>{log_dir}/\2", text,
                "log paths under /var/log/nginx", at_least=at_least)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl for this run."""
    cert, key = directory / "test-cert.pem", directory / "test-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    return cert, key


class Nginx:
    def __init__(self, prefix: Path, *, upstream_port: int, site_conf: Path = SITE_CONF):
        self.binary = nginx_binary()
        if self.binary is None:
            raise RuntimeError("nginx not found")
        self.prefix = Path(prefix)
        self.log_dir = self.prefix / "logs"
        self.port = free_port()
        self.tls_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_base = f"ws://127.0.0.1:{self.port}"
        self.wss_base = f"wss://127.0.0.1:{self.tls_port}"        # the app's wss://<host>:3002
        for d in ("logs", "tmp", "conf", "conf/snippets"):
            (self.prefix / d).mkdir(parents=True, exist_ok=True)
        self.cert, key = self_signed(self.prefix / "conf")
        (self.prefix / "conf" / "snippets" / WS_SNIPPET.name).write_text(render_logs(WS_SNIPPET.read_text(), self.log_dir))
        self.site_path = self.prefix / "conf" / "fonana-realtime.conf"
        self.site_path.write_text(render_site(site_conf.read_text(), upstream_port=upstream_port,
                                              listen_port=self.port, log_dir=self.log_dir,
                                              tls_port=self.tls_port, cert=self.cert, key=key))
        tmp = self.prefix / "tmp"
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.conf_path = self.prefix / "conf" / "nginx.conf"
        self.conf_path.write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.prefix}/nginx.pid;\n"
            f"error_log {self.log_dir}/error.log info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"    client_body_temp_path {tmp}/body;\n    proxy_temp_path {tmp}/proxy;\n"
            f"    fastcgi_temp_path {tmp}/fastcgi;\n    uwsgi_temp_path {tmp}/uwsgi;\n"
            f"    scgi_temp_path {tmp}/scgi;\n"
            f"    access_log {self.log_dir}/default-access.log;\n"
            f"    include {self.site_path};\n"
            "}\n")
        self.stdout_path = self.prefix / "logs" / "stdout.txt"
        self.stderr_path = self.prefix / "logs" / "stderr.txt"
        self.proc: subprocess.Popen | None = None
        self.http = requests.Session()
        self.http.trust_env = False

    def _cmd(self, *extra: str) -> list[str]:
        return [self.binary, "-p", f"{self.prefix}/", "-c", str(self.conf_path),
                "-e", str(self.log_dir / "error.log"), *extra]

    def check(self) -> None:
        """`nginx -t`: a config error is reported as such, not as a start-up timeout."""
        proc = subprocess.run(self._cmd("-t"), capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise AssertionError(f"nginx -t refused the generated config:\n{proc.stderr}\n"
                                 + self.site_path.read_text())

    def start(self, timeout: float = 15.0, *, health_status: int = 200) -> "Nginx":
        """Start it and wait until `GET /health` through it answers `health_status`
        (200 with a server behind it; 502 when the upstream is deliberately absent)."""
        self.check()
        self._out = open(self.stdout_path, "ab")
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(self._cmd(), stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited with {self.proc.returncode}:\n" + self.output())
            try:
                r = self.http.get(self.base_url + "/health", timeout=2)
                if r.status_code == health_status:
                    return self
                last = f"HTTP {r.status_code}"
            except requests.RequestException as exc:
                last = repr(exc)
            # polling a starting process with a deadline
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"nginx: /health through it not {health_status} within {timeout}s (last: {last})\n" + self.output())

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGQUIT)        # graceful: finish and write the logs
                self.proc.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)
        self._out.close()
        self._err.close()
        self.proc = None

    def output(self) -> str:
        parts = []
        for p in sorted(self.log_dir.glob("*")):
            if p.is_file():
                parts.append(f"----- nginx {p.name} -----\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def access_lines(self) -> list[str]:
        path = self.log_dir / "fonana-realtime.access.log"
        return path.read_text(errors="replace").splitlines() if path.is_file() else []

    def get(self, path: str, **kw) -> requests.Response:
        return self.http.get(self.base_url + path, timeout=15, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.http.post(self.base_url + path, timeout=15, **kw)
