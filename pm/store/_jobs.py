"""The store's job queries: a page of jobs, one job, a page of a job's tasks, the unfinished
jobs, and retention's delete.

Plain functions of a connection; :class:`pm.store.Store` runs them off the trio thread (the
unfinished jobs are read once, at start, on it).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from ..schemas import FINAL_JOB_STATUSES, JobView, TaskView
from ..state import JobRecord, TaskSelection
from ._connection import Connection
from ._rows import JOB_COLUMNS, job_view, load_records, load_task_page

_json_encode = msgspec.json.encode


def list_jobs(
    connection: Connection,
    *,
    limit: int,
    offset: int,
    status: str | None = None,
    outcome: str | None = None,
) -> tuple[list[JobView], int]:
    """Jobs newest first (``collection`` = task ids) of ``status`` and ``outcome`` (``None``:
    any), and the total matching."""
    # Column names are ours, never a client's.
    matching = {
        column: value for column, value in (("status", status), ("outcome", outcome)) if value
    }
    where = "WHERE " + " AND ".join(f"{column} = ?" for column in matching) if matching else ""
    parameters = tuple(matching.values())
    total = connection.execute(f"SELECT count(*) FROM jobs {where}", parameters)
    rows = connection.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT ? OFFSET ?",
        (*parameters, limit, offset),
    ).fetchall()
    views = []
    for row in rows:
        task_ids = [
            task_id
            for (task_id,) in connection.execute(
                "SELECT id FROM tasks WHERE job_id = ? ORDER BY id", (row[0],)
            )
        ]
        views.append(job_view(row, task_ids))
    return views, int(total.fetchone()[0])


def load_job(
    connection: Connection, *, job_id: int, tunnel_for: Callable[[str], str]
) -> JobRecord | None:
    records = load_records(connection, "WHERE id = ?", (job_id,), tunnel_for)
    return records[0] if records else None


def job_task_page(
    connection: Connection,
    *,
    job_id: int,
    selection: TaskSelection,
    tunnel_for: Callable[[str], str],
) -> tuple[list[TaskView], int] | None:
    """One page of a stored job's tasks and how many match; ``None``: no such job."""
    filters = {
        column: value
        for column, value in (
            ("status", selection.status),
            ("device", selection.device),
            ("waiting", selection.waiting),
        )
        if value is not None
    }
    page = load_task_page(
        connection, job_id, filters, selection.limit, selection.offset, tunnel_for
    )
    if page is None:
        return None
    tasks, total = page
    return [task.view() for task in tasks], total


def load_unfinished(connection: Connection, tunnel_for: Callable[[str], str]) -> list[JobRecord]:
    """Jobs not final, oldest first, with all their tasks."""
    placeholders = ",".join("?" * len(FINAL_JOB_STATUSES))
    return load_records(
        connection,
        f"WHERE status NOT IN ({placeholders})",
        tuple(sorted(FINAL_JOB_STATUSES)),
        tunnel_for,
    )


def delete_finished_before(connection: Connection, *, epoch_seconds: float) -> int:
    """Retention: delete, in one transaction, finished jobs that ended before
    ``epoch_seconds``; returns how many."""
    with connection.transaction():
        doomed = [
            row[0]
            for row in connection.execute(
                "SELECT id FROM jobs WHERE finish_at IS NOT NULL AND finish_at < ?",
                (epoch_seconds,),
            )
        ]
        doomed_json = _json_encode([[job_id] for job_id in doomed]).decode()
        for statement in connection.statements.delete_jobs:
            connection.execute(statement, (doomed_json,))
    return len(doomed)
