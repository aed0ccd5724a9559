"""``pm serve`` start-up failures as an operator meets them: a real subprocess, one line on
stderr naming the problem, exit status 2, never a traceback.

(The MQTT port in use and a missing mosquitto binary are tested with the broker.)
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from pm.cluster import LeaseBook
from pm.store import SCHEMA_VERSION, open_store
from pm.store._postgres_connection import connect_postgres
from tests.integration.brokers import MosquittoBroker, free_port
from tests.integration.gateways import REPOSITORY, cli_environment, pm
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


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, ("cluster.enabled = true needs store.url", "SQLite")),
        (
            {"PM_STORE_URL": "postgresql://pm@127.0.0.1:1/pm"},
            ("cluster.enabled = true needs broker.embedded = false",),
        ),
        (
            {
                "PM_STORE_URL": "postgresql://pm@127.0.0.1:1/pm",
                "PM_BROKER_EMBEDDED": "false",
                "PM_TASKS_MAX_IN_FLIGHT": "10",
            },
            ("tasks.max_in_flight = 10 is below cluster.shards = 256", "set it to at least 256"),
        ),
    ],
    ids=["sqlite", "embedded-broker", "max-in-flight"],
)
async def test_a_cluster_it_cannot_run_is_refused_at_start(
    tmp_path: Path, settings: dict[str, str], expected: tuple[str, ...]
) -> None:
    ports = ANY_PORTS[:2] if "PM_BROKER_EMBEDDED" in settings else ANY_PORTS
    with trio.fail_after(30):
        result = await pm(
            "serve",
            *ports,
            env={
                "PM_CLUSTER_ENABLED": "true",
                # What a cluster needs besides (a per-gateway answer topic): with it the
                # setting under test is the only reason left to refuse.
                "PM_TOPICS_RESPONSE": "/remote/{device}/response/{gateway}",
                "PM_STORE_PATH": str(tmp_path / "pm.db"),
                **settings,
            },
        )
    assert_one_line(result, *expected)
    # Refused before anything started: not even the database was created.
    assert not (tmp_path / "pm.db").exists()


async def test_a_cluster_without_a_gateway_level_in_its_answer_topic_is_refused(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        result = await pm(
            "serve",
            *ANY_PORTS,
            env={"PM_CLUSTER_ENABLED": "true", "PM_STORE_PATH": str(tmp_path / "pm.db")},
        )
    assert_one_line(result, "topics.response", "has no {gateway} level", "cluster.enabled")
    assert not (tmp_path / "pm.db").exists()


async def test_a_gateway_with_another_shard_count_than_its_cluster_refuses_to_start(
    mosquitto: MosquittoBroker, migrated_postgres_url: str
) -> None:
    connection = connect_postgres(migrated_postgres_url)
    LeaseBook(connection, "gw-first", lease_ttl=10, shards=4).join()
    connection.close()
    with trio.fail_after(30):
        result = await pm(
            "serve",
            *ANY_PORTS[:2],
            env={
                "PM_CLUSTER_ENABLED": "true",
                "PM_CLUSTER_SHARDS": "8",
                "PM_TOPICS_RESPONSE": "/remote/{device}/response/{gateway}",
                "PM_STORE_URL": migrated_postgres_url,
                "PM_BROKER_EMBEDDED": "false",
                "PM_MQTT_HOST": mosquitto.host,
                "PM_MQTT_PORT": str(mosquitto.port),
            },
        )
    assert_one_line(result, "cluster.shards is 8 but the cluster in this database has 4 shards")


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


def _without_psycopg(tmp_path: Path) -> dict[str, str]:
    """An environment where ``import psycopg`` fails as on a machine without the
    [postgres] extra: a package of that name that raises ImportError comes first."""
    hidden = tmp_path / "without-psycopg" / "psycopg"
    hidden.mkdir(parents=True, exist_ok=True)
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'psycopg'\")\n")
    return {"PYTHONPATH": f"{hidden.parent}{os.pathsep}{REPOSITORY}"}


async def test_store_url_without_the_postgresql_driver(tmp_path: Path) -> None:
    url = "postgresql://pm:s3cret@127.0.0.1:1/pm"
    with trio.fail_after(30):
        result = await pm(
            "serve", *ANY_PORTS, env={**_without_psycopg(tmp_path), "PM_STORE_URL": url}
        )
    assert_one_line(
        result,
        "store.url is set (postgresql://pm:***@127.0.0.1:1/pm)",
        "PostgreSQL driver is not installed: pip install 'sanji-puppetmaster[postgres]'",
    )
    assert "s3cret" not in result.stderr


async def test_the_gateway_needs_no_postgresql_driver_on_sqlite(tmp_path: Path) -> None:
    # Every module of pm and actors imports without psycopg (it is imported only to open a
    # store.url), and the CLI runs. (A __main__ module would run its program: left out.)
    modules = "import pkgutil, importlib, pm, actors; " + (
        "[importlib.import_module(m.name) for p in (pm, actors)"
        " for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')"
        " if not m.name.endswith('__main__')]"
    )
    with trio.fail_after(30):
        imported = await trio.run_process(
            [sys.executable, "-c", modules],
            env=cli_environment(_without_psycopg(tmp_path)),
            capture_stderr=True,
            check=False,
        )
        help_text = await pm("serve", "--help", env=_without_psycopg(tmp_path))
    assert imported.returncode == 0, imported.stderr.decode()
    assert help_text.returncode == 0, help_text.stderr


async def test_an_unreachable_postgresql_server(tmp_path: Path) -> None:
    # A closed port: nothing listens on it.
    url = f"postgresql://pm:s3cret@127.0.0.1:{free_port()}/pm"
    with trio.fail_after(30):
        result = await pm("serve", *ANY_PORTS, env={"PM_STORE_URL": url})
    assert_one_line(result, "cannot use the database", "(store.url)", "Connection refused")
    assert "s3cret" not in result.stderr
