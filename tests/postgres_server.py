"""A throwaway PostgreSQL server for the tests: ``initdb`` into a fresh directory, ``postgres``
on a free 127.0.0.1 port as a child of the test run, one database per test, all removed at
the end.

PostgreSQL refuses to run as root: as root the server runs as ``nobody`` (its directory is
handed over to it); as anyone else, as that user. The server dies with the test run
(``PR_SET_PDEATHSIG``) even when pytest is killed.

Where PostgreSQL is not installed the tests that need it FAIL, saying so: ``make test``
installs it (the Debian ``postgresql`` package), and a store test that silently ran on SQLite
only would prove nothing about PostgreSQL.
"""

from __future__ import annotations

import ctypes
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.brokers import free_port

# Seconds the server may take to accept connections, and to stop: it needs well under one.
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_UNPRIVILEGED_USER = "nobody"


def find_postgres_bin() -> Path:
    """The directory of ``initdb`` and ``postgres``: on PATH, else the newest under
    /usr/lib/postgresql (the Debian package puts them there, off PATH)."""
    on_path = shutil.which("initdb")
    if on_path is not None and shutil.which("postgres") is not None:
        return Path(on_path).resolve().parent
    installed = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if installed:
        return Path(installed[-1]).parent
    pytest.fail(
        "PostgreSQL is not installed (no initdb/postgres on PATH or under "
        "/usr/lib/postgresql/*/bin): `make test` installs it (apt-get install postgresql); "
        "the store tests run on it too",
        pytrace=False,
    )


def _die_with_parent() -> None:
    # Called in the child after it took the unprivileged user (a change of user would clear
    # the setting): a SIGKILLed pytest runs no teardown, and the server must not outlive it.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGINT)


class PostgresServer:
    """A running server; :meth:`create_database` gives each test its own database."""

    def __init__(
        self, port: int, process: subprocess.Popen[bytes], directory: Path, owner: tuple[int, int]
    ) -> None:
        self.port = port
        self.process = process
        # The server's own directory (removed with it) and the uid, gid it runs as: a
        # tablespace a test creates must be a directory of that user.
        self.directory = directory
        self.owner = owner
        self._names = itertools.count(1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"pm_test_{os.getpid()}_{next(self._names)}"
        with self.admin() as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop it, closing any connection a test left open (a simulated crash does)."""
        name = url.rpartition("/")[2]
        with self.admin() as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _as_server_user() -> dict[str, Any]:
    """subprocess arguments that run a command as the server's user."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam(_UNPRIVILEGED_USER)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a server in a new temporary directory; stop it and remove everything on exit."""
    bin_directory = find_postgres_bin()
    base = Path(tempfile.mkdtemp(prefix="pm-postgres-"))
    as_user = _as_server_user()
    if as_user:
        os.chown(base, as_user["user"], as_user["group"])
    try:
        subprocess.run(
            [str(bin_directory / "initdb"), "-D", str(base / "data"), "-U", "postgres",
             "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"],
            check=True, capture_output=True, cwd=base, **as_user,
        )  # fmt: skip
        port = free_port()
        log = (base / "server.log").open("wb")
        process = subprocess.Popen(
            [str(bin_directory / "postgres"), "-D", str(base / "data"), "-p", str(port),
             "-k", str(base), "-c", "listen_addresses=127.0.0.1",
             # Throwaway data: no need to survive a power cut, and a small footprint on a
             # machine other test runs share.
             "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "shared_buffers=16MB",
             "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, cwd=base, preexec_fn=_die_with_parent,
            **as_user,
        )  # fmt: skip
        owner = (as_user["user"], as_user["group"]) if as_user else (os.getuid(), os.getgid())
        server = PostgresServer(port, process, base, owner)
        try:
            _wait_until_ready(server, base / "server.log")
            yield server
        finally:
            process.send_signal(signal.SIGINT)  # "fast" shutdown: clients are cut off
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _wait_until_ready(server: PostgresServer, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"postgres exited at start:\n{log.read_text(errors='replace')}")
        try:
            server.admin().close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                pytest.fail(f"postgres not ready in {_START_TIMEOUT} s:\n{log.read_text()}")
            time.sleep(0.05)
