"""What only the PostgreSQL store meets, against the throwaway server: the server dropping the
connection, running out of disk or turning read-only while the gateway runs (storage faults,
retried until they pass, nothing lost), and a database it cannot use at start. (The full-disk
test mounts a tmpfs: it skips, saying why, where that is not allowed, as the SQLite ones do.)

Real server, real threads, so real time: a hang guard on each test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import trio

from pm.store import StoreOpenError, StoreUnavailable, open_store
from pm.store._postgres_connection import redacted, translate_for_postgres
from pm.store._store import FAULT_RETRY_DELAY
from tests.postgres_server import PostgresServer
from tests.small_filesystem import small_filesystem
from tests.stores import batch, create_job, read, running_store
from tests.waiting import poll_until

GUARD = 20 + 4 * FAULT_RETRY_DELAY


@pytest.fixture
def url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new database of the throwaway server, dropped after the test."""
    database = postgres_server.create_database()
    yield database
    postgres_server.drop_database(database)


def _name(url: str) -> str:
    return url.rpartition("/")[2]


def _drop_connections(server: PostgresServer, url: str) -> None:
    """The server ends every session of the database (what a restart or fail-over does);
    returns once they have ended."""
    with server.admin() as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = %s",
            (_name(url),),
        )


async def test_a_session_ended_while_idle_is_replaced_before_the_next_commit(
    postgres_server: PostgresServer, url: str
) -> None:
    with trio.fail_after(GUARD):
        async with running_store(url) as store:
            record = await create_job(store, batch((["a", "b"], "/x")))
            await store.sync()
            _drop_connections(postgres_server, url)
            record.settle(record.tasks[0], "resolved", {"ok": 1}, 1.0)
            store.task_changed(record.tasks[0])
            store.job_changed(record)
            await store.sync()
            assert (store.failed_commits, store.fault) == (0, None)
            _drop_connections(postgres_server, url)
            (view,), _ = await store.list_jobs(status=None, limit=10, offset=0)
    assert view.finish_count == 1


async def test_a_lost_server_keeps_every_change_and_writes_it_when_it_returns(
    postgres_server: PostgresServer, url: str
) -> None:
    with trio.fail_after(GUARD):
        async with running_store(url) as store:
            devices = [f"dev-{n}" for n in range(50)]
            record = await create_job(store, batch((devices, "/a")))
            await store.sync()

            # The database refuses new sessions and its sessions end: the store's connection
            # is gone and cannot come back for now.
            with postgres_server.admin() as admin:
                admin.execute(f"ALTER DATABASE {_name(url)} ALLOW_CONNECTIONS false")
            _drop_connections(postgres_server, url)
            for position, task in enumerate(record.tasks):
                record.settle(task, "resolved", {"n": position}, 1.0)
                store.task_changed(task)
            store.job_changed(record)
            with pytest.raises(StoreUnavailable):
                await store.sync()
            assert store.fault is not None and store.failed_commits >= 1
            # A read needs the server too: it says why instead of hanging.
            with pytest.raises(StoreUnavailable):
                await store.list_jobs(status=None, limit=10, offset=0)

            with postgres_server.admin() as admin:
                admin.execute(f"ALTER DATABASE {_name(url)} ALLOW_CONNECTIONS true")
            # The store retries by itself, on a new connection.
            await poll_until(lambda: store.fault is None, FAULT_RETRY_DELAY / 4)
            await store.sync()
            views, total = await store.list_jobs(status=None, limit=10, offset=0)
    assert (total, views[0].status, views[0].finish_count) == (1, "resolved", 50)
    assert read(url, "SELECT count(*) FROM tasks WHERE status = 'resolved'") == [(50,)]


async def test_a_full_disk_on_the_server_keeps_every_change_and_writes_it_when_space_returns(
    postgres_server: PostgresServer,
) -> None:
    """The database lives in a tablespace on a 16 MiB tmpfs, filled to its last byte: the
    server cannot extend a table (53100 "No space left on device")."""
    with small_filesystem(postgres_server.directory / "small-disk", size="16m") as disk:
        os.chown(disk.path, *postgres_server.owner)
        url = postgres_server.url(f"pm_small_{os.getpid()}")
        with postgres_server.admin() as admin:
            admin.execute(f"CREATE TABLESPACE small_{os.getpid()} LOCATION '{disk.path}'")
            admin.execute(f"CREATE DATABASE {_name(url)} TABLESPACE small_{os.getpid()}")
        try:
            with trio.fail_after(GUARD):
                async with running_store(url) as store:
                    record = await create_job(store, batch(([f"d{n}" for n in range(100)], "/a")))
                    await store.sync()
                    disk.fill()
                    for position, task in enumerate(record.tasks):
                        record.settle(task, "resolved", {"n": position, "pad": "x" * 2000}, 1.0)
                        store.task_changed(task)
                    store.job_changed(record)
                    with pytest.raises(StoreUnavailable, match="No space left on device"):
                        await store.sync()
                    assert store.fault is not None and "53100" in store.fault
                    # Reads answer from what was committed before the fault.
                    (view,), _ = await store.list_jobs(status=None, limit=10, offset=0)
                    assert view.done_count == 0

                    disk.free()
                    await poll_until(lambda: store.fault is None, FAULT_RETRY_DELAY / 4)
                    await store.sync()
            assert read(url, "SELECT count(*) FROM tasks WHERE status = 'resolved'") == [(100,)]
        finally:
            postgres_server.drop_database(url)
            with postgres_server.admin() as admin:
                admin.execute(f"DROP TABLESPACE IF EXISTS small_{os.getpid()}")


async def test_a_read_only_server_is_a_fault_until_it_takes_writes_again(
    postgres_server: PostgresServer, url: str
) -> None:
    """A fail-over that lands on a standby: connections work, writes are refused."""

    def read_only(on: bool) -> None:
        with postgres_server.admin() as admin:
            admin.execute(
                f"ALTER DATABASE {_name(url)} SET default_transaction_read_only = "
                + ("on" if on else "off")
            )
        _drop_connections(postgres_server, url)

    with trio.fail_after(GUARD):
        async with running_store(url) as store:
            record = await create_job(store, batch((["a", "b"], "/x")))
            await store.sync()
            read_only(True)
            record.settle(record.tasks[0], "resolved", {"ok": 1}, 1.0)
            store.task_changed(record.tasks[0])
            with pytest.raises(StoreUnavailable):
                await store.sync()
            # The first commit meets the dropped session; the retries, on a new one, meet a
            # read-only database.
            await poll_until(lambda: "25006" in (store.fault or ""), FAULT_RETRY_DELAY / 4)
            with pytest.raises(StoreUnavailable, match="read-only"):
                await store.sync()
            # Reads go on from what was committed.
            (view,), _ = await store.list_jobs(status=None, limit=10, offset=0)
            assert view.finish_count == 0

            read_only(False)
            await poll_until(lambda: store.fault is None, FAULT_RETRY_DELAY / 4)
            await store.sync()
    assert read(url, "SELECT status FROM tasks ORDER BY id") == [("resolved",), ("pending",)]


async def test_an_unreachable_server_stops_the_start_naming_store_url_without_the_password(
    postgres_server: PostgresServer,
) -> None:
    # The server's port, a database that does not exist, a password that must not show.
    url = postgres_server.url("nowhere").replace("postgres@", "postgres:s3cret@")
    with trio.fail_after(GUARD), pytest.raises(StoreOpenError) as refused:
        await open_store(url, commit_interval=0.05)
    message = str(refused.value)
    assert "(store.url)" in message and "nowhere" in message and "does not exist" in message
    assert "s3cret" not in message and "\n" not in message


async def test_a_read_only_database_stops_the_start(
    postgres_server: PostgresServer, url: str
) -> None:
    with postgres_server.admin() as admin:
        admin.execute(f"ALTER DATABASE {_name(url)} SET default_transaction_read_only = on")
    with (
        trio.fail_after(GUARD),
        pytest.raises(StoreOpenError, match=r"\(store.url\): it is read-only \(a standby"),
    ):
        await open_store(url, commit_interval=0.05)


def test_the_password_is_left_out_of_what_is_shown() -> None:
    assert redacted("postgresql://pm:pw@db:5432/pm") == "postgresql://pm:***@db:5432/pm"
    assert redacted("postgresql://pm@db/pm") == "postgresql://pm@db/pm"


def test_the_schema_types_become_postgresql_types_and_nothing_else_changes() -> None:
    script = "CREATE TABLE t (id INTEGER PRIMARY KEY, at REAL, name TEXT, reality TEXT)"
    assert translate_for_postgres(script) == (
        "CREATE TABLE t (id BIGINT PRIMARY KEY, at DOUBLE PRECISION, name TEXT, reality TEXT)"
    )
