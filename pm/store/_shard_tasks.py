"""A clustered gateway's reads of the tasks it is to dispatch: the unfinished tasks of the
shards it holds (all jobs, when it gains a shard; some jobs, when it finds new ones), and
the statuses of the jobs not final (its poll for jobs posted on other gateways,
pm/shard_control.py).

Plain functions of a connection, run in a worker thread on the dispatch path's own
connection (pm/shard_dispatch.py). PostgreSQL only (``ANY`` of an array parameter).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..schemas import FINAL_JOB_STATUSES, JOB_STATUSES
from ..state import JobRecord, TaskRecord
from ._connection import Connection
from ._rows import JOB_COLUMNS, TASK_COLUMNS, entries_of, restore_job, task_record

# jobs_by_status serves an IN list of the statuses not final (not a NOT IN).
UNFINISHED_STATUSES = tuple(status for status in JOB_STATUSES if status not in FINAL_JOB_STATUSES)


def load_shard_parts(
    connection: Connection,
    shards: Sequence[int],
    tunnel_for: Callable[[str], str],
    job_ids: Sequence[int] | None = None,
) -> list[tuple[int, JobRecord]]:
    """The unfinished (pending, sent) tasks of ``shards``, of the jobs ``job_ids`` only if
    given, as one record per job and shard (its *part*): jobs oldest first (``created_at``,
    then id), each part's tasks in job order. Unfinished jobs only."""
    condition = "shard = ANY(CAST(? AS BIGINT[])) AND status IN ('pending', 'sent')"
    parameters: list[Any] = [list(shards)]
    if job_ids is not None:
        condition += " AND job_id = ANY(CAST(? AS BIGINT[]))"
        parameters.append(list(job_ids))
    jobs = connection.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE finish_at IS NULL AND id IN"
        f" (SELECT job_id FROM tasks WHERE {condition}) ORDER BY created_at, id",
        parameters,
    ).fetchall()
    parts: list[tuple[int, JobRecord]] = []
    for job in jobs:
        job_id, created_at = job[:2]
        entries = entries_of(connection, job_id)
        by_shard: dict[int, list[TaskRecord]] = {}
        for row in connection.execute(
            f"SELECT {TASK_COLUMNS}, shard FROM tasks WHERE job_id = ? AND {condition} ORDER BY id",
            (job_id, *parameters),
        ):
            task = task_record(row[:-1], job_id, created_at, entries[row[1]], tunnel_for)
            by_shard.setdefault(int(row[-1]), []).append(task)
        parts += [(shard, restore_job(job, tasks)) for shard, tasks in sorted(by_shard.items())]
    return parts
