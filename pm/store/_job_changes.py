"""What changed in a job since the last look, read from the database: the store's side of
following a job that another gateway runs (:mod:`pm.stored_job_feed`).

One look reads the job's row and the task rows that can still have changed: those not final
now (the ``tasks_by_job_status`` index) and those that were not final at the previous look
(by id). A task that was final at the previous look never changes again, so the rows read
shrink as the job progresses. Plain functions of a connection, run off the trio thread by
:class:`pm.store.Store`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import msgspec

from ..schemas import FINAL_TASK_STATUSES, JobView
from ..state import TaskRecord
from ._connection import Connection
from ._rows import JOB_COLUMNS, TASK_COLUMNS, entries_of, job_view, task_record

# Task ids asked for in one IN (...): well under SQLite's 32,766 host parameters.
_IDS_PER_STATEMENT = 500
_UNSETTLED = tuple(sorted({"pending", "sent"} - FINAL_TASK_STATUSES))


class JobLook(msgspec.Struct, frozen=True):
    """One look at a stored job.

    Attributes:
      view: the job as its row has it (no ``collection``).
      rows: the task rows read, by task id (compare with the previous look's to see what
        changed).
      unsettled: the ids of the tasks not final now.
    """

    view: JobView
    rows: dict[int, tuple[Any, ...]]
    unsettled: frozenset[int]


def look_at_job(
    connection: Connection,
    *,
    job_id: int,
    previously_unsettled: Collection[int],
    with_tasks: bool = True,
) -> JobLook | None:
    """The job's row and its task rows that may have changed since a look that found
    ``previously_unsettled`` not final (none without ``with_tasks``: a watcher of snapshots
    only needs the job row); ``None``: the job is gone (deleted)."""
    job = connection.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if job is None:
        return None
    view = job_view(job, [])
    view.collection = msgspec.UNSET
    if not with_tasks:
        return JobLook(view, {}, frozenset())
    placeholders = ",".join("?" * len(_UNSETTLED))
    rows = {
        row[0]: row
        for row in connection.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE job_id = ? AND status IN ({placeholders})",
            (job_id, *_UNSETTLED),
        )
    }
    unsettled = frozenset(rows)
    settled_since = sorted(set(previously_unsettled) - unsettled)
    for start in range(0, len(settled_since), _IDS_PER_STATEMENT):
        chunk = settled_since[start : start + _IDS_PER_STATEMENT]
        marks = ",".join("?" * len(chunk))
        for row in connection.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE job_id = ? AND id IN ({marks})",
            (job_id, *chunk),
        ):
            rows[row[0]] = row
    return JobLook(view, rows, unsettled)


def tasks_of_rows(
    connection: Connection,
    *,
    job_id: int,
    rows: Collection[tuple[Any, ...]],
    tunnel_for: Callable[[str], str],
) -> list[TaskRecord]:
    """The tasks of ``rows`` (of ``TASK_COLUMNS``), in id order, with their batch entries."""
    if not rows:
        return []
    job = connection.execute("SELECT created_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if job is None:
        return []
    entries = entries_of(connection, job_id)
    return [
        task_record(row, job_id, job[0], entries[row[1]], tunnel_for)
        for row in sorted(rows, key=lambda row: row[0])
    ]
