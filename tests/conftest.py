"""Fixtures shared by every test module; plain helpers live in importable modules beside it.

Why helper modules and not this file: pytest loads a conftest itself and does not mean it to be
imported (``from conftest import`` breaks under ``--import-mode=importlib`` and can load the
file twice), while a helper module is ordinary Python. Test modules import helpers from those
modules and never from one another. pytest rewrites ``assert`` only in test modules and
conftests, so the helper modules that assert are registered for rewriting here, before anything
imports them: their failures then show the compared values too.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite(
    "tests.ext4_image",
    "tests.fakes",
    "tests.job_api",
    "tests.served_app",
    "tests.small_filesystem",
    "tests.postgres_server",
    "tests.stores",
    "tests.integration.brokers",
    "tests.integration.gateways",
)

from tests.ext4_image import Ext4Image, ext4_image  # noqa: E402
from tests.postgres_server import PostgresServer, running_postgres  # noqa: E402
from tests.served_app import (  # noqa: E402 - after the above
    OTHER_TOKEN,
    TOKEN,
    ServedGateway,
    app_config,
    serve_app,
)
from tests.small_filesystem import SmallFilesystem, small_filesystem  # noqa: E402
from tests.stores import DatabaseUnderTest  # noqa: E402

# The engines a store test runs on (the ``database`` fixture).
STORE_ENGINES = ("sqlite", "postgresql")


@pytest.fixture
async def gateway() -> AsyncIterator[ServedGateway]:
    """The HTTP app on a free localhost port over a real engine with fake devices that answer
    every request at once (``gateway.devices.auto_answer = False`` holds them)."""
    async with serve_app(app_config()) as served:
        yield served


@pytest.fixture
async def secured() -> AsyncIterator[ServedGateway]:
    """As ``gateway``, with API tokens: ``TOKEN`` and ``OTHER_TOKEN`` of tests/served_app.py."""
    async with serve_app(app_config(api={"tokens": [TOKEN, OTHER_TOKEN]})) as served:
        yield served


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl not found on PATH: it makes the test certificate")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    # An EC key: generated in milliseconds, where RSA takes a noticeable moment.
    arguments = (
        "req -x509 -nodes -days 1 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
        "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1,DNS:localhost"
    ).split()
    subprocess.run(
        [openssl, *arguments, "-keyout", str(keyfile), "-out", str(certfile)],
        check=True,
        capture_output=True,
    )
    return certfile, keyfile


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallFilesystem]:
    """A 4 MiB tmpfs mounted for the test (``disk.fill()`` makes it a full disk); the test is
    skipped, with the reason, where mounting is not allowed. A test requests it before any
    gateway fixture so it is unmounted only after the gateway stopped."""
    with small_filesystem(tmp_path / "disk") as mounted:
        yield mounted


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Ext4Image]:
    """An ext4 filesystem on a loop device mounted for the test (``ext4.fail()`` makes it
    read-only under open files, as a disk error does; ``ext4.repair()`` mounts it writable
    again at the same path); skipped, with the reason, where the machine cannot. Requested
    before any gateway fixture, like ``disk``."""
    with ext4_image(tmp_path / "ext4") as mounted:
        yield mounted


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole run (tests/postgres_server.py); it FAILS
    the tests that use it where PostgreSQL is not installed."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def migrated_postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new, migrated database of the throwaway server, dropped after the test."""
    from pm.store import migrate
    from pm.store._postgres_connection import connect_postgres

    database = postgres_server.create_database()
    connection = connect_postgres(database)
    migrate(connection)
    connection.close()
    yield database
    postgres_server.drop_database(database)


@pytest.fixture(params=STORE_ENGINES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseUnderTest]:
    """An empty database for a store test, once per engine: a SQLite file in ``tmp_path``,
    then a new database on the throwaway PostgreSQL server (dropped after the test)."""
    if request.param == "sqlite":
        yield DatabaseUnderTest("sqlite", str(tmp_path / "pm.db"))
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    try:
        yield DatabaseUnderTest("postgresql", url)
    finally:
        server.drop_database(url)


@pytest.fixture
def watcher_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every write of the watchers' own path (``SendDeadlineStream.send_now``), in order."""
    from pm.http.server import SendDeadlineStream

    writes: list[bytes] = []
    send_now = SendDeadlineStream.send_now

    def recorded(stream: SendDeadlineStream, data: bytes) -> int:
        writes.append(bytes(data))
        return send_now(stream, data)

    monkeypatch.setattr(SendDeadlineStream, "send_now", recorded)
    yield writes
