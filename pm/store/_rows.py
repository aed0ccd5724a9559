"""The store's SQL statements and the mapping between rows and records."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import msgspec

from ..presence import DevicePresence, Presence
from ..schemas import JobView
from ..state import JobRecord, TaskRecord, iso_timestamp

_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode


def columns(count: int) -> str:
    """``json_extract(value, '$[0]'), ...``: the columns of one row of a JSON array of rows."""
    return ", ".join(f"json_extract(value, '$[{index}]')" for index in range(count))


# Every write statement takes ``?`` = a JSON array of rows (see Store._commit).
UPSERT_COUNTERS = (
    f"INSERT INTO counters (name, value) SELECT {columns(2)} FROM json_each(?) WHERE true"
    " ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)"
)
INSERT_JOBS = (
    "INSERT INTO jobs (id, created_at, finish_at, timeout, status, total_count, finish_count,"
    " error_count, progress, pending_count, sent_count, expired_count)"
    f" SELECT {columns(12)} FROM json_each(?)"
)
INSERT_ENTRIES = (
    "INSERT INTO entries (job_id, position, method, resource, data)"
    f" SELECT {columns(5)} FROM json_each(?)"
)
INSERT_TASKS = (
    "INSERT INTO tasks (id, job_id, entry, device, timeout, status, progress, result, finish_at,"
    f" expires_at) SELECT {columns(10)} FROM json_each(?)"
)
# Updates join through a CTE of plain columns so SQLite looks each row up by primary key.
UPDATE_JOBS = (
    "WITH u (id, finish_at, status, finish_count, error_count, progress, pending_count,"
    f" sent_count, expired_count) AS (SELECT {columns(9)} FROM json_each(?))"
    " UPDATE jobs SET finish_at = u.finish_at, status = u.status,"
    " finish_count = u.finish_count, error_count = u.error_count, progress = u.progress,"
    " pending_count = u.pending_count, sent_count = u.sent_count,"
    " expired_count = u.expired_count FROM u WHERE jobs.id = u.id"
)
UPDATE_TASKS = (
    f"WITH u (id, status, progress, result, finish_at) AS (SELECT {columns(5)} FROM json_each(?))"
    " UPDATE tasks SET status = u.status, progress = u.progress, result = u.result,"
    " finish_at = u.finish_at FROM u WHERE tasks.id = u.id"
)
UPSERT_DEVICES = (
    "INSERT INTO devices (id, presence, last_seen, connected_at, disconnected_at)"
    f" SELECT {columns(5)} FROM json_each(?) WHERE true"
    " ON CONFLICT (id) DO UPDATE SET presence = excluded.presence,"
    " last_seen = excluded.last_seen, connected_at = excluded.connected_at,"
    " disconnected_at = excluded.disconnected_at"
)
DEVICE_COLUMNS = "id, presence, last_seen, connected_at, disconnected_at"
DELETE_JOBS = tuple(
    f"DELETE FROM {table} WHERE {column} IN (SELECT json_extract(value, '$[0]') FROM json_each(?))"
    for table, column in (("tasks", "job_id"), ("entries", "job_id"), ("jobs", "id"))
)

JOB_COLUMNS = (
    "id, created_at, finish_at, timeout, status, total_count, finish_count, error_count, progress,"
    " pending_count, sent_count, expired_count"
)


def job_view(row: tuple[Any, ...], task_ids: list[int]) -> JobView:
    (job_id, created_at, finish_at, timeout, status, total, finished, errors, progress) = row[:9]
    pending, sent, expired = row[9:12]
    return JobView(
        id=job_id,
        created_at=iso_timestamp(created_at),
        finish_at=None if finish_at is None else iso_timestamp(finish_at),
        timeout=timeout,
        status=status,
        progress=progress,
        total_count=total,
        done_count=finished + errors,
        finish_count=finished,
        error_count=errors,
        pending_count=pending,
        sent_count=sent,
        expired_count=expired,
        collection=task_ids,
    )


def job_row(record: JobRecord) -> tuple[Any, ...]:
    return (
        record.id,
        record.created_at,
        record.finish_at,
        record.timeout,
        record.status,
        len(record.tasks),
        record.finish_count,
        record.error_count,
        record.progress,
        record.pending_count,
        record.sent_count,
        record.expired_count,
    )


def job_update(record: JobRecord) -> tuple[Any, ...]:
    return (
        record.id,
        record.finish_at,
        record.status,
        record.finish_count,
        record.error_count,
        record.progress,
        record.pending_count,
        record.sent_count,
        record.expired_count,
    )


def task_row(task: TaskRecord) -> tuple[Any, ...]:
    return (
        task.id,
        task.job_id,
        task.entry,
        task.device,
        task.timeout,
        task.status,
        task.progress,
        result_text(task.result),
        task.finish_at,
        task.expires_at,
    )


def task_update(task: TaskRecord) -> tuple[Any, ...]:
    return (task.id, task.status, task.progress, result_text(task.result), task.finish_at)


def device_row(record: DevicePresence) -> tuple[Any, ...]:
    return (
        record.id,
        str(record.presence),
        record.last_seen,
        record.connected_at,
        record.disconnected_at,
    )


def device_presence(row: tuple[Any, ...]) -> DevicePresence:
    device, presence, last_seen, connected_at, disconnected_at = row
    return DevicePresence(
        id=device,
        presence=Presence(presence),
        last_seen=last_seen,
        connected_at=connected_at,
        disconnected_at=disconnected_at,
    )


def result_text(result: Any) -> str | None:
    """A result as JSON text (TEXT column, readable by any SQLite tool), or NULL."""
    return None if result is None else _json_encode(result).decode()


TASK_COLUMNS = "id, entry, device, timeout, status, progress, result, finish_at, expires_at"

# A device's tasks across jobs: TASK_COLUMNS, then what a task view needs from its job and
# batch entry (job id, the job's created_at, the entry's method, resource, data).
DEVICE_TASK_COLUMNS = (
    "t.id, t.entry, t.device, t.timeout, t.status, t.progress, t.result, t.finish_at,"
    " t.expires_at, t.job_id, j.created_at, e.method, e.resource, e.data"
)
DEVICE_TASK_JOINS = (
    "FROM tasks t JOIN jobs j ON j.id = t.job_id"
    " JOIN entries e ON e.job_id = t.job_id AND e.position = t.entry"
)


def _entries(connection: sqlite3.Connection, job_id: int) -> dict[int, tuple[str, str, Any]]:
    return {
        position: (method, resource, _json_decode(data))
        for position, method, resource, data in connection.execute(
            "SELECT position, method, resource, data FROM entries WHERE job_id = ?", (job_id,)
        )
    }


def task_record(
    row: tuple[Any, ...],
    job_id: int,
    created_at: float,
    entry_fields: tuple[str, str, Any],
    tunnel_for: Callable[[str], str],
) -> TaskRecord:
    """A task from a row of ``TASK_COLUMNS``, its job's ``created_at`` and its batch entry's
    (method, resource, decoded data), shared by the tasks of one entry."""
    task_id, entry, device, timeout, status, progress, result, finish_at, expires_at = row
    method, resource, data = entry_fields
    task = TaskRecord(
        task_id=task_id,
        job_id=job_id,
        entry=entry,
        device=device,
        method=method,
        resource=resource,
        data=data,
        tunnel=tunnel_for(device),
        timeout=timeout,
        created_at=created_at,
        expires_at=expires_at,
    )
    task.status = status
    task.progress = progress
    task.result = None if result is None else _json_decode(result)
    task.finish_at = finish_at
    return task


def load_records(
    connection: sqlite3.Connection,
    where: str,
    parameters: tuple[Any, ...],
    tunnel_for: Callable[[str], str],
) -> list[JobRecord]:
    records = []
    for job in connection.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY id", parameters
    ).fetchall():
        job_id, created_at, finish_at, timeout, status = job[:5]
        entries = _entries(connection, job_id)
        tasks = [
            task_record(row, job_id, created_at, entries[row[1]], tunnel_for)
            for row in connection.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE job_id = ? ORDER BY id", (job_id,)
            )
        ]
        records.append(JobRecord.restore(job_id, tasks, timeout, created_at, status, finish_at))
    return records


def load_task_page(
    connection: sqlite3.Connection,
    job_id: int,
    filters: dict[str, str],
    limit: int,
    offset: int,
    tunnel_for: Callable[[str], str],
) -> tuple[list[TaskRecord], int] | None:
    """One page of a stored job's tasks in job order whose columns equal ``filters`` (column
    names are the caller's, never a client's), and how many match; ``None``: no such job."""
    job = connection.execute("SELECT created_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if job is None:
        return None
    where = "".join(f" AND {column} = ?" for column in filters)
    parameters = (job_id, *filters.values())
    total = connection.execute(
        f"SELECT count(*) FROM tasks WHERE job_id = ?{where}", parameters
    ).fetchone()[0]
    rows = connection.execute(
        f"SELECT {TASK_COLUMNS} FROM tasks WHERE job_id = ?{where} ORDER BY id LIMIT ? OFFSET ?",
        (*parameters, limit, offset),
    ).fetchall()
    entries = _entries(connection, job_id) if rows else {}
    return [task_record(row, job_id, job[0], entries[row[1]], tunnel_for) for row in rows], int(
        total
    )
