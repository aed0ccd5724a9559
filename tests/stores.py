"""Job records and a real store for the tests: batches, job records (alone, or with ids from
the store), a store whose actor runs, and reading the database file as another process
would."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio

from pm.schemas import BatchEntry
from pm.state import JobRecord, expand_batch
from pm.store import Store, open_store

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


def read(path: Path, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """What another process would read from the file right now."""
    with sqlite3.connect(path) as connection:
        return connection.execute(sql, parameters).fetchall()
