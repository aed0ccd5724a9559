"""``pm serve`` start-up failures as an operator meets them: a real subprocess, one line on
stderr naming the problem, exit status 2, never a traceback.

(The MQTT port in use and a missing mosquitto binary are tested with the broker.)
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest
import trio

from pm.store import SCHEMA_VERSION, open_store
from tests.integration.gateways import pm
from tests.small_filesystem import SmallFilesystem

# Free ports for both listeners: a failure must come from what the test set up, nothing else.
ANY_PORTS = ("--http", "127.0.0.1:0", "--broker", "127.0.0.1:0")


def assert_one_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit status 2 and exactly one stderr line, ``pm serve: ...``, containing ``expected``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pm serve: "), lines
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    assert result.stdout == "", result.stdout  # it never announced itself ready


async def test_an_http_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken, trio.fail_after(30):
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await pm("serve", "--http", f"127.0.0.1:{port}", "--broker", "127.0.0.1:0")
    assert_one_line(
        result,
        f"cannot listen for HTTP on 127.0.0.1:{port}: Address already in use",
        "--http",
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PM_HTTP_PORT", "70000", "<= 65535 - at `$.http.port` (from PM_HTTP_PORT)"),
        ("PM_TASKS_DEFAULT_TIMEOUT", "-1", "> 0.0 - at `$.tasks.default_timeout`"),
        ("PM_LIMITS_MAX_JOBS_RUNNING", "0", ">= 1 - at `$.limits.max_jobs_running`"),
    ],
)
async def test_a_config_value_out_of_range(variable: str, value: str, expected: str) -> None:
    # Free ports all the same: were the check missing, the gateway must not take 8080 or 1883.
    ports = ("--broker", "127.0.0.1:0") if variable == "PM_HTTP_PORT" else ANY_PORTS
    with trio.fail_after(30):
        result = await pm("serve", *ports, env={variable: value})
    assert_one_line(result, "invalid configuration", expected)


@pytest.mark.parametrize("section", ["http", "broker"])
@pytest.mark.parametrize("content", [None, "not a PEM file\n"], ids=["missing", "garbage"])
async def test_an_unusable_tls_certificate(
    tmp_path: Path, section: str, content: str | None
) -> None:
    path = tmp_path / "cert.pem"
    if content is not None:
        path.write_text(content)
    files = {
        f"PM_{section.upper()}_CERTFILE": str(path),
        f"PM_{section.upper()}_KEYFILE": str(path),
    }
    with trio.fail_after(30):
        result = await pm("serve", *ANY_PORTS, env=files)
    assert_one_line(result, f"cannot use {section}.certfile = {str(path)!r}")


async def test_a_database_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    path = tmp_path / "plain-file" / "pm.db"
    with trio.fail_after(30):
        result = await pm("serve", *ANY_PORTS, env={"PM_STORE_PATH": str(path)})
    assert_one_line(
        result, f"cannot use the database {str(path)!r} (store.path)", "not a directory"
    )


async def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are notes, not SQLite pages\n" * 100)
    with trio.fail_after(30):
        result = await pm("serve", *ANY_PORTS, env={"PM_STORE_PATH": str(path)})
    assert_one_line(result, f"{str(path)!r} (store.path): file is not a database")


async def test_a_database_from_a_newer_release(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with trio.fail_after(30):
        (await open_store(path, commit_interval=0.05)).close()
        with sqlite3.connect(path) as connection:
            connection.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
        result = await pm("serve", *ANY_PORTS, env={"PM_STORE_PATH": str(path)})
    assert_one_line(
        result,
        f"database schema version {SCHEMA_VERSION + 1} is newer than this release "
        f"({SCHEMA_VERSION})",
    )
    # Refused before anything was written.
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION + 1,)
        ]


async def test_a_database_on_a_read_only_filesystem(disk: SmallFilesystem) -> None:
    with trio.fail_after(30):
        (await open_store(disk.path / "pm.db", commit_interval=0.05)).close()
        await trio.run_process(["mount", "-o", "remount,ro", str(disk.path)], capture_stderr=True)
        result = await pm("serve", *ANY_PORTS, env={"PM_STORE_PATH": str(disk.path / "pm.db")})
    assert_one_line(result, "(store.path): unable to open database file", "read-only")
