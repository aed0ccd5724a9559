"""What a clustered gateway's group commit writes beyond a single gateway's: tasks inserted
with their shard, every task update fenced by the lease it was made under, and job rows
recounted from their tasks (several gateways settle one job's tasks).

A :class:`ClusterWrites` is attached to the :class:`~pm.store.Store` of a gateway with
``cluster.enabled`` (:meth:`pm.store.Store.attach_cluster`). The job actors of a clustered
gateway record their changes here (through a :class:`ShardRecorder`, which knows the shard
lease their tasks were taken under), not in the store's own pending rows; the store takes a
:class:`ClusterWindow` at each commit and writes it in the same transaction as its own rows.

In that transaction, after the store's own statements:

1. the task updates, one statement, each row with its shard and epoch: ``UPDATE tasks ...
   WHERE tasks.id = u.id AND <FENCE on u.shard, u.epoch>``. A row whose lease expired or
   changed hands changes nothing (``RETURNING`` says which went through); those rows are
   *refused*: counted, and their shard reported lost (:attr:`ClusterWrites.on_refused`);
2. the rows of the jobs whose tasks changed are locked, in id order (``FOR UPDATE``), then
   recounted from their tasks in a new statement (so from a snapshot taken after the lock:
   under READ COMMITTED it sees every commit of another gateway that held the lock before).
   The last gateway to settle a task of the job therefore always sees every task final,
   and the job's final status is set once: only while ``finish_at`` is NULL (a conditional
   UPDATE). Its status is what the job part that settled last ended with (``resolved``, or
   ``timeout``), else the job's ``ending``.

PostgreSQL only (``FOR SHARE`` in the fence, ``FILTER``, ``json_object_agg``).

Error handling: as the store's commit (the database's errors propagate to it; a storage
fault gives the window back with :meth:`ClusterWrites.give_back`, retried whole).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from ..schemas import JobStatus
from ..state import JobRecord, TaskRecord
from ..store._connection import Connection
from ..store._postgres_connection import STATEMENTS, rows_from
from ..store._rows import Row, result_text
from ..store._statements import (
    INTEGER,
    TASK_ROW,
    TASK_UPDATE,
    TEXT,
    WriteStatements,
    insert_statement,
)
from ._leases import ShardLease, fence_on
from ._shards import shard_of

_json_encode = msgspec.json.encode

_SHARD_COLUMNS = (("shard", INTEGER), ("epoch", INTEGER))
_UPDATE_ROW = (*TASK_UPDATE, *_SHARD_COLUMNS)

INSERT_TASKS = insert_statement("tasks", (*TASK_ROW, ("shard", INTEGER)), rows_from)

_assignments = ", ".join(f"{name} = u.{name}" for name, _ in TASK_UPDATE[1:])
_update_names = ", ".join(name for name, _ in _UPDATE_ROW)
UPDATE_TASKS_FENCED = (
    f"WITH u ({_update_names}) AS ({rows_from([kind for _, kind in _UPDATE_ROW])})"
    f" UPDATE tasks SET {_assignments} FROM u"
    f" WHERE tasks.id = u.id AND {fence_on('u.shard', 'u.epoch')}"
    " RETURNING tasks.id"
)

LOCK_JOBS = (
    f"SELECT id FROM jobs WHERE id IN (SELECT id FROM ({rows_from([INTEGER])}) AS j (id))"
    " ORDER BY id FOR UPDATE"
)

_UNSETTLED = "c.pending + c.sent"
RECOUNT_JOBS = f"""
WITH wished (id, status) AS ({rows_from([INTEGER, TEXT])}),
counts AS (
    SELECT job_id,
        count(*) AS total,
        count(*) FILTER (WHERE status = 'pending') AS pending,
        count(*) FILTER (WHERE status = 'sent') AS sent,
        count(*) FILTER (WHERE status = 'resolved') AS resolved,
        count(*) FILTER (WHERE status = 'expired') AS expired,
        count(*) FILTER (WHERE status = 'timeout') AS timed_out,
        count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
        sum(progress) AS progress_sum,
        max(finish_at) AS last_finish
    FROM tasks WHERE job_id IN (SELECT id FROM wished) GROUP BY job_id
),
codes AS (
    SELECT job_id, status, json_object_agg(code_key, n) AS by_code FROM (
        SELECT job_id, status, coalesce(CAST(code AS TEXT), 'unknown') AS code_key,
            count(*) AS n
        FROM tasks WHERE job_id IN (SELECT id FROM wished) AND status IN ('resolved', 'error')
        GROUP BY job_id, status, code_key
    ) AS by_status_and_code GROUP BY job_id, status
)
UPDATE jobs SET
    pending_count = c.pending,
    sent_count = c.sent,
    finish_count = c.resolved,
    error_count = c.total - c.pending - c.sent - c.resolved,
    expired_count = c.expired,
    progress = c.progress_sum / c.total,
    outcomes = CAST(json_build_object(
        'resolved', coalesce((SELECT by_code FROM codes
            WHERE codes.job_id = c.job_id AND codes.status = 'resolved'), CAST('{{}}' AS JSON)),
        'error', coalesce((SELECT by_code FROM codes
            WHERE codes.job_id = c.job_id AND codes.status = 'error'), CAST('{{}}' AS JSON)),
        'timeout', c.timed_out, 'expired', c.expired, 'cancelled', c.cancelled
    ) AS TEXT),
    status = CASE
        WHEN jobs.finish_at IS NOT NULL THEN jobs.status
        WHEN {_UNSETTLED} = 0 THEN coalesce(w.status, jobs.ending)
        WHEN c.pending < c.total THEN 'dispatching'
        ELSE jobs.status END,
    outcome = CASE
        WHEN jobs.finish_at IS NOT NULL THEN jobs.outcome
        WHEN {_UNSETTLED} > 0 THEN NULL
        WHEN c.resolved = c.total THEN 'succeeded'
        WHEN c.resolved = 0 THEN 'failed'
        ELSE 'partial' END,
    finish_at = CASE
        WHEN jobs.finish_at IS NOT NULL THEN jobs.finish_at
        WHEN {_UNSETTLED} = 0 THEN c.last_finish END,
    eta = NULL
FROM counts AS c JOIN wished AS w ON w.id = c.job_id
WHERE jobs.id = c.job_id
"""


class ClusterWindow:
    """The cluster's changes of one commit window: changed tasks with the lease each was
    made under, and the jobs to recount with the status their part here ended with (None
    while it runs)."""

    def __init__(self) -> None:
        self.tasks: dict[int, tuple[TaskRecord, ShardLease]] = {}
        self.jobs: dict[int, JobStatus | None] = {}
        # Set by the write: ids of the task rows the fence refused, and their shards.
        self.refused: dict[int, int] = {}

    def __bool__(self) -> bool:
        return bool(self.tasks or self.jobs)


class ClusterWrites:
    """A clustered gateway's part of the group commit (see the module docstring).

    Args:
      gateway_id: the owner name of this gateway's leases (the fence checks it).
      shards: ``cluster.shards`` (a new task's shard).
    """

    def __init__(self, gateway_id: str, shards: int) -> None:
        self.gateway_id = gateway_id
        self.shards = shards
        # The store's insert statements with the shard written with every new task.
        self.statements: WriteStatements = STATEMENTS._replace(insert_tasks=INSERT_TASKS)
        self._window = ClusterWindow()
        # Set by the store it is attached to: wakes the store actor.
        self.mark_dirty: Callable[[], None] = lambda: None
        # Told the shards of rows the fence refused, after the commit (the dispatch path
        # stops serving them).
        self.on_refused: Callable[[set[int]], None] = lambda shards: None
        self.refused_rows = 0
        self._shard_cache: dict[str, int] = {}

    def shard_of(self, device: str) -> int:
        shard = self._shard_cache.get(device)
        if shard is None:
            shard = self._shard_cache[device] = shard_of(device, self.shards)
            if len(self._shard_cache) > 1_000_000:  # a bound, whatever devices come
                self._shard_cache.clear()
        return shard

    # -- the store's hooks -------------------------------------------------------------------

    def task_rows(self, tasks: Iterable[TaskRecord]) -> tuple[list[Row], list[Row]]:
        """The insert rows of a new job's tasks: every one whole, with its shard (see
        :func:`pm.store._rows.task_rows` for the single gateway's)."""
        return [], [(*_whole_row(task), self.shard_of(task.device)) for task in tasks]

    def take_window(self) -> ClusterWindow:
        window, self._window = self._window, ClusterWindow()
        return window

    def give_back(self, failed: ClusterWindow) -> None:
        """A commit failed: its changes are written with the next (the newer record of a
        task is the same object, so nothing goes backwards)."""
        for task_id, change in failed.tasks.items():
            self._window.tasks.setdefault(task_id, change)
        for job_id, status in failed.jobs.items():
            self._window.jobs.setdefault(job_id, status)

    def write(self, connection: Connection, window: ClusterWindow) -> int:
        """Write ``window`` in the transaction under way (the store's worker thread);
        returns how many rows were sent. Fills ``window.refused``."""
        rows = 0
        if window.tasks:
            updates = [
                (*_update_row(task), lease.shard, lease.epoch)
                for task, lease in window.tasks.values()
            ]
            written = {
                task_id
                for (task_id,) in connection.execute(
                    UPDATE_TASKS_FENCED, (_json_encode(updates).decode(), self.gateway_id)
                ).fetchall()
            }
            window.refused = {
                task_id: lease.shard
                for task_id, (_, lease) in window.tasks.items()
                if task_id not in written
            }
            rows += len(updates)
        if window.jobs:
            ids = _json_encode([[job_id] for job_id in sorted(window.jobs)]).decode()
            connection.execute(LOCK_JOBS, (ids,)).fetchall()
            wished = _json_encode(list(window.jobs.items())).decode()
            connection.execute(RECOUNT_JOBS, (wished,))
            rows += len(window.jobs)
        return rows

    def committed(self, window: ClusterWindow) -> None:
        """After the commit took ``window`` (on the trio thread): count the refused rows and
        report their shards."""
        if window.refused:
            self.refused_rows += len(window.refused)
            self.on_refused(set(window.refused.values()))

    # -- what job actors record (through a ShardRecorder) ------------------------------------

    def task_changed(self, task: TaskRecord, lease: ShardLease) -> None:
        self._window.tasks[task.id] = (task, lease)
        self.mark_dirty()

    def job_changed(self, record: JobRecord) -> None:
        self._window.jobs[record.id] = record.status if record.final else None
        self.mark_dirty()


class ShardRecorder:
    """The :class:`~pm.job_contract.ChangeRecorder` of a job's part in one shard: its
    changes go to ``writes`` with the ``lease`` its tasks were taken under."""

    def __init__(self, writes: ClusterWrites, lease: ShardLease) -> None:
        self._writes = writes
        self.lease = lease

    def task_changed(self, task: TaskRecord) -> None:
        self._writes.task_changed(task, self.lease)

    def job_changed(self, record: JobRecord) -> None:
        self._writes.job_changed(record)


def _whole_row(task: TaskRecord) -> tuple[Any, ...]:
    previous = task.previous_attempts
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
        task.sends,
        task.sent_at,
        task.waiting,
        task.attempts,
        task.next_attempt_at,
        None if previous is None else _json_encode(previous).decode(),
        task.code,
    )


def _update_row(task: TaskRecord) -> tuple[Any, ...]:
    row = _whole_row(task)
    # TASK_UPDATE: id, then the columns from status on, without job_id, entry, device,
    # timeout, expires_at.
    return (row[0], *row[5:9], *row[10:])
