"""Job records and a real store for the tests: batches, job records (alone, or with ids from
the store), a store whose actor runs, the database a test runs on (a SQLite file or a
PostgreSQL database: the ``database`` fixture), and reading it as another process would."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio

from pm.config import StoreConfig
from pm.schemas import BatchEntry
from pm.state import JobRecord, expand_batch
from pm.store import Store, open_store
from pm.store._connection import Connection
from pm.store._postgres_connection import PostgresConnection, is_postgres_url
from pm.store._sqlite_connection import SqliteConnection

# A short window keeps file-store tests fast; memory-store tests use a long one and sync().
FAST_WINDOW = 0.01
CREATED = 1_700_000_000.0


def tunnel_for(device: str) -> str:
    return f"/remote/{device}/response"


def batch(*entries: tuple[str | list[str], str]) -> list[BatchEntry]:
    return [
        msgspec.convert(
            {"method": "get", "resource": resource, "__destination": devices, "data": {"n": i}},
            BatchEntry,
        )
        for i, (devices, resource) in enumerate(entries)
    ]


def make_job(
    job_id: int,
    first_task_id: int,
    entries: Sequence[BatchEntry],
    *,
    created_at: float = CREATED,
    timeout: float | None = None,
) -> JobRecord:
    task_ids = iter(range(first_task_id, first_task_id + 1_000_000))
    tasks = expand_batch(
        job_id,
        list(entries),
        next_task_id=task_ids.__next__,
        tunnel_for=tunnel_for,
        default_timeout=30.0,
        now=created_at,
    )
    return JobRecord(job_id, tasks, timeout, created_at)


def job_on_devices(
    devices: int, *, created_at: float = CREATED, timeout: float | None = None
) -> JobRecord:
    """Job 1: one GET of ``/r`` on devices ``d0`` .. ``d<devices - 1>``, task ids from 1."""
    entries = batch(([f"d{n}" for n in range(devices)], "/r"))
    return make_job(1, 1, entries, created_at=created_at, timeout=timeout)


async def create_job(store: Store, entries: Sequence[BatchEntry], **kwargs: Any) -> JobRecord:
    """Allocate ids through the store, like the engine does, and record the job."""
    total = sum(len(entry.devices) for entry in entries)
    job_id, first_task_id = await store.allocate_ids(1, total)
    record = make_job(job_id, first_task_id, entries, **kwargs)
    store.job_created(record, entries)
    return record


@asynccontextmanager
async def running_store(path: str | Path, window: float = FAST_WINDOW) -> AsyncIterator[Store]:
    """An open store whose actor runs; on exit the actor makes its last commit, then closes."""
    store = await open_store(path, commit_interval=window)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            yield store
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def connect(location: str | Path) -> Connection:
    """A connection of the store's own kind to ``location`` (nothing migrated), as another
    process would open it."""
    if is_postgres_url(str(location)):
        return PostgresConnection(str(location))
    return SqliteConnection(sqlite3.connect(location, isolation_level=None), str(location))


def read(location: str | Path, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """What another process would read from the database right now (``?`` placeholders)."""
    connection = connect(location)
    try:
        return [tuple(row) for row in connection.execute(sql, parameters).fetchall()]
    finally:
        connection.close()


def write(location: str | Path, sql: str, parameters: tuple[Any, ...] = ()) -> None:
    """Change the database behind the store's back, as another process would."""
    connection = connect(location)
    try:
        with connection.transaction():
            connection.execute(sql, parameters)
    finally:
        connection.close()


class DatabaseUnderTest:
    """The database a store test runs on: ``engine`` is "sqlite" (``location`` a file path)
    or "postgresql" (a URL of a database of its own on the throwaway server)."""

    def __init__(self, engine: str, location: str) -> None:
        self.engine = engine
        self.location = location

    def __repr__(self) -> str:
        return f"<{self.engine} database {self.location}>"

    def read(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return read(self.location, sql, parameters)

    def write(self, sql: str, parameters: tuple[Any, ...] = ()) -> None:
        write(self.location, sql, parameters)

    def indexes(self, table: str) -> set[str]:
        """The names of ``table``'s indexes."""
        if self.engine == "sqlite":
            return {row[1] for row in self.read(f"PRAGMA index_list({table})")}
        return {
            row[0]
            for row in self.read("SELECT indexname FROM pg_indexes WHERE tablename = ?", (table,))
        }

    def store_config(self, **settings: Any) -> StoreConfig:
        """``[store]`` settings that open this database."""
        where = "url" if self.engine == "postgresql" else "path"
        return StoreConfig(**{where: self.location}, **settings)
