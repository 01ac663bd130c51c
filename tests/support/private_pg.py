"""A private PostgreSQL cluster for one test: initdb, start, stop, start again, remove.

The machine's PostgreSQL on 5432 is shared by the whole suite and must never be
stopped; a test that takes the database away (an outage) gets a cluster of its own
on a free port, in a temporary directory, with the project schema loaded.

initdb refuses to run as root, so as root every PostgreSQL binary runs as the
`postgres` OS user (runuser) and the cluster lives in a directory that user owns.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2

from .db import schema_path
from .server import free_port

DB_NAME = "fonana"
SUPERUSER = "postgres"


def pg_bindir() -> Path | None:
    """The directory of initdb/pg_ctl: $PG_BINDIR, else the newest Debian install, else PATH."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                         reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def unavailable_reason() -> str | None:
    """Why a private cluster cannot be made here (None when it can)."""
    if pg_bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found; set PG_BINDIR"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "running as root without a `postgres` OS user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root without `runuser` to run initdb as `postgres`"
    return None


class PrivateCluster:
    """`with PrivateCluster() as pg:` -> a running cluster with database `fonana` and the schema.

    `pg.url` is the DATABASE_URL; `pg.stop()` / `pg.start()` take it away and bring it back
    on the same port and data directory; leaving the block stops it and removes everything.
    """

    def __init__(self, *, port: int | None = None):
        self.bindir = pg_bindir()
        if self.bindir is None:
            raise RuntimeError(unavailable_reason())
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="fonana-rt-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self.url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DB_NAME}"
        self.admin_url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam(SUPERUSER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as_user = ["runuser", "-u", SUPERUSER, "--"]
        self.running = False

    # -- binaries ---------------------------------------------------------------------------
    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [*self._as_user, str(self.bindir / tool), *args]
        proc = subprocess.run(cmd, cwd=self.root, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "LC_ALL": "C.UTF-8"})
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                               + self.log_tail())
        return proc

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.logfile.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "----- private PostgreSQL log -----\n" + "\n".join(text)

    # -- lifecycle --------------------------------------------------------------------------
    def init(self) -> "PrivateCluster":
        self._run("initdb", "-D", str(self.datadir), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        return self

    def start(self, timeout: float = 30) -> None:
        """Start on the same port (pg_ctl -w: returns once it accepts connections)."""
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-o", opts, "-w",
                  "-t", str(int(timeout)), "start", timeout=timeout + 10)
        self.running = True

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """Stop it: `fast` ends every open session at once, as a crash or restart would for clients."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", str(int(timeout)), "stop",
                  timeout=timeout + 10)
        self.running = False

    def create_database(self) -> None:
        """CREATE DATABASE fonana and load the project schema into it."""
        conn = psycopg2.connect(self.admin_url, connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{DB_NAME}"')
        finally:
            conn.close()
        conn = psycopg2.connect(self.url, connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(schema_path().read_text())
        finally:
            conn.close()

    def accepts_connections(self) -> bool:
        try:
            psycopg2.connect(self.url, connect_timeout=2).close()
            return True
        except psycopg2.Error:
            return False

    def remove(self) -> None:
        if self.running:
            try:
                self.stop(mode="immediate")
            except Exception:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PrivateCluster":
        try:
            self.init()
            self.start()
            self.create_database()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


