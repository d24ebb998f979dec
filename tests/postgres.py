"""A throwaway PostgreSQL server for the tests: ``initdb`` in a temporary directory and
``pg_ctl start`` on 127.0.0.1 at a free port, stopped (and removed) at the end.

The server binaries are Debian's ``postgresql`` package (``.ci/run`` installs it); they refuse
to run as root, so under root the cluster belongs to ``nobody`` (``runuser``). Without them the
PostgreSQL tests skip, except in CI (``CI`` set), where they fail: CI must run them.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

USER = "postgres"  # the cluster's superuser (initdb -U), trusted on loopback


def server_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl: Debian's newest /usr/lib/postgresql/*/bin,
    else the PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl and shutil.which("initdb"):
        return Path(pg_ctl).parent
    return None


def _version(path: str) -> float:
    try:
        return float(Path(path).parts[-3])
    except ValueError:
        return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A running cluster; :meth:`database` makes a fresh database and returns its URL."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="lightning-glif-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse root
            runuser = shutil.which("runuser")
            if runuser is None:
                raise RuntimeError("running as root without runuser: cannot start PostgreSQL")
            self.as_user = [runuser, "-u", "nobody", "--"]
            shutil.chown(self.root, "nobody")
        os.chmod(self.root, 0o700)

    def _run(self, *command: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.as_user, *command], capture_output=True, text=True, timeout=120,
            cwd=self.root, **kwargs,
        )  # fmt: skip

    def start(self) -> PostgresServer:
        """Start the server (its cluster made on the first start); again after :meth:`stop`."""
        if not self.data.exists():
            done = self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER,
                             "--auth=trust", "--no-sync", "-E", "UTF8")  # fmt: skip
            if done.returncode:
                raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        options = (f"-h 127.0.0.1 -p {self.port} -k {self.root} -F "
                   "-c max_connections=200 -c shared_buffers=16MB")  # fmt: skip
        log = str(self.root / "server.log")
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
                         "-l", log, "-w", "-t", "60", "start")  # fmt: skip
        if done.returncode:
            log = (self.root / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}{log}")
        return self

    def stop(self, remove: bool = True) -> None:
        """Stop the server at once (as a crash would), and remove its cluster unless told not to."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def postgres_server():
    """The session fixture's body: a started server, or a skip (a failure in CI)."""
    bindir = server_binaries()
    if bindir is None:
        message = ("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install "
                   "postgresql (.ci/run does)")  # fmt: skip
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the PostgreSQL tests.")
        pytest.skip(message)
    server = PostgresServer(bindir).start()
    try:
        t0 = time.monotonic()
        while True:  # accepting connections (pg_ctl -w waited for it; be sure)
            try:
                import psycopg

                psycopg.connect(server.url(), connect_timeout=5).close()
                break
            except Exception:
                if time.monotonic() - t0 > 30:
                    raise
                time.sleep(0.5)
        yield server
    finally:
        server.stop()
