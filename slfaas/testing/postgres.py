"""A private PostgreSQL server for tests: ``initdb`` into a temporary directory, ``pg_ctl start``
on a free loopback port (trust authentication, nothing listening elsewhere), one fresh database
per caller, everything removed at ``stop``.

The binaries are Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``) or
any on PATH. PostgreSQL refuses to run as root, so as root the server runs as the ``postgres``
user the package creates (via ``runuser``); otherwise as the caller.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

SERVER_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (not installed, or no user to run it as)."""


def find_bindir() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        if (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgresUnavailable("PostgreSQL is not installed (initdb not found; Debian: apt-get install postgresql)")


def _version(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, bindir: Path | None = None):
        self.bindir = bindir or find_bindir()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                pw = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PostgresUnavailable(f"running as root needs the {SERVER_USER!r} user to run PostgreSQL as "
                                          f"(Debian's postgresql package creates it)") from None
            self._uid, self._gid = pw.pw_uid, pw.pw_gid
        self.root = Path(tempfile.mkdtemp(prefix="slfaas-pg-"))
        self.port = _free_port()
        self.user = SERVER_USER
        self._started = False

    def _run(self, *argv: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
        cmd = list(argv)
        if self._as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=self.root)
        if out.returncode != 0:
            raise PostgresUnavailable(f"{Path(argv[0]).name} failed ({out.returncode}): "
                                      f"{(out.stderr or out.stdout).strip()[-800:]}")
        return out

    def start(self) -> "PostgresServer":
        data = self.root / "data"
        if self._as_root:
            os.chown(self.root, self._uid, self._gid)
        os.chmod(self.root, 0o700)
        try:
            self._run(str(self.bindir / "initdb"), "-D", str(data), "-U", self.user, "--auth=trust",
                      "--no-sync", "-E", "UTF8", "--locale=C")
            options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off " \
                      f"-c max_connections=200"
            self._run(str(self.bindir / "pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"),
                      "-o", options, "-w", "-t", "60", "start")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self._started = True
        return self

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its SQLAlchemy URL (psycopg 3)."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self._started:
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
            except (PostgresUnavailable, subprocess.TimeoutExpired):
                pass
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)
