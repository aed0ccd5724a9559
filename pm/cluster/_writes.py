"""What a clustered gateway's group commit writes beyond a single gateway's: tasks inserted
with their shard, every task update fenced by the lease it was made under, and job rows
recounted from their tasks (several gateways settle one job's tasks).

A :class:`ClusterWrites` is attached to the :class:`~pm.store.Store` of a gateway with
``cluster.enabled`` (:meth:`pm.store.Store.attach_cluster`). The job actors of a clustered
gateway record their changes here (through a :class:`ShardRecorder`, which knows the shard
lease their tasks were taken under), not in the store's own pending rows; the store takes a
:class:`ClusterWindow` at each commit and writes it in the same transaction as its own rows.

In that transaction, after the store's own statements:

1. the task updates (the single gateway's narrow and whole rows, a statement each), each
   row with its shard and epoch: ``UPDATE tasks ... WHERE tasks.id = u.id AND <FENCE on
   u.shard, u.epoch>``. A row whose lease expired or
   changed hands changes nothing (``RETURNING`` says which went through); those rows are
   *refused*: counted, and their shard reported lost (:attr:`ClusterWrites.on_refused`),
   unless the task is gone (its job deleted while its parts ran: dropped, not refused);
2. the rows of the jobs whose tasks changed are locked, in id order (``FOR UPDATE``), then
   recounted from their tasks in a new statement (so from a snapshot taken after the lock:
   under READ COMMITTED it sees every commit of another gateway that held the lock before).
   The last gateway to settle a task of the job therefore always sees every task final,
   and the job's final status is set once: only while ``finish_at`` is NULL (a conditional
   UPDATE). Its status is ``timeout`` if the job part that settled last timed out (every
   part has the job's deadline), else the job's ``ending`` when it was stopped job-wide
   (``cancelled``, ``aborted``: pm/cluster/_control.py), else what that part ended with.
   A job paused job-wide stays ``paused`` while it has tasks unsettled.
   Its ``eta`` is derived as a single gateway's (:class:`pm.outcomes.SettleRate`) from the
   job-wide settle times of its tasks (every gateway's): the latest settle plus the tasks
   unsettled at the rate seen from the first settle to the latest; NULL until two tasks
   settled at different instants, and once final.

PostgreSQL only (``FOR SHARE`` in the fence, ``FILTER``, ``json_object_agg``).

Error handling: as the store's commit (the database's errors propagate to it; a storage
fault gives the window back with :meth:`ClusterWrites.give_back`, retried whole).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import msgspec

from ..schemas import JobStatus
from ..state import JobRecord, TaskRecord
from ..store._connection import Connection
from ..store._postgres_connection import STATEMENTS, rows_from
from ..store._rows import Row, task_rows, task_updates
from ..store._statements import (
    FRESH_CONSTANTS,
    INTEGER,
    TASK_FRESH_ROW,
    TASK_PLAIN_UPDATE,
    TASK_ROW,
    TASK_UPDATE,
    TEXT,
    WriteStatements,
    insert_statement,
)
from ._leases import ShardLease, fence_on
from ._shards import shard_of

_json_encode = msgspec.json.encode

_SHARD = ("shard", INTEGER)
_EPOCH = ("epoch", INTEGER)


def _fenced_update(row: Sequence[tuple[str, str]]) -> str:
    """The update of task rows of ``row``'s columns, each followed by its shard and epoch,
    that changes only those whose lease is still held (see the module docstring)."""
    columns = (*row, _SHARD, _EPOCH)
    names = ", ".join(name for name, _ in columns)
    assignments = ", ".join(f"{name} = u.{name}" for name, _ in row[1:])
    return (
        f"WITH u ({names}) AS ({rows_from([kind for _, kind in columns])})"
        f" UPDATE tasks SET {assignments} FROM u"
        f" WHERE tasks.id = u.id AND {fence_on('u.shard', 'u.epoch')}"
        " RETURNING tasks.id"
    )


# The single gateway's narrow and whole rows (pm/store/_rows.py), with the shard.
INSERT_FRESH_TASKS = insert_statement(
    "tasks", (*TASK_FRESH_ROW, _SHARD), rows_from, FRESH_CONSTANTS
)
INSERT_TASKS = insert_statement("tasks", (*TASK_ROW, _SHARD), rows_from)
UPDATE_PLAIN_TASKS_FENCED = _fenced_update(TASK_PLAIN_UPDATE)
UPDATE_TASKS_FENCED = _fenced_update(TASK_UPDATE)

_EXISTING_TASKS = "SELECT id FROM tasks WHERE id = ANY(CAST(? AS BIGINT[]))"

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
        count(*) FILTER (WHERE attempts > 1) AS retried,
        sum(progress) AS progress_sum,
        max(finish_at) AS last_finish,
        min(finish_at) AS first_finish,
        count(finish_at) AS settled
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
    retried_count = c.retried,
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
        WHEN {_UNSETTLED} = 0 AND jobs.ending <> 'resolved' AND w.status IS DISTINCT FROM
            'timeout' THEN jobs.ending
        WHEN {_UNSETTLED} = 0 THEN coalesce(w.status, jobs.ending)
        WHEN jobs.status = 'paused' THEN 'paused'
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
    eta = CASE
        WHEN jobs.finish_at IS NOT NULL OR {_UNSETTLED} = 0 OR c.settled < 2
            OR c.last_finish <= c.first_finish THEN NULL
        ELSE c.last_finish
            + {_UNSETTLED} * (c.last_finish - c.first_finish) / (c.settled - 1) END
FROM counts AS c JOIN wished AS w ON w.id = c.job_id
WHERE jobs.id = c.job_id
"""


class ClusterWindow:
    """The cluster's changes of one commit window, as rows built on the trio thread (a row
    never mixes two states of a record): the fenced task updates with the shard of each
    task, and the jobs to recount with the status their part here ended with (None while
    it runs)."""

    def __init__(
        self,
        tasks: dict[int, tuple[TaskRecord, ShardLease]],
        jobs: dict[int, JobStatus | None],
    ) -> None:
        self.tasks = tasks
        self.jobs = jobs
        plain: list[Row] = []
        whole: list[Row] = []
        for task, lease in tasks.values():
            plain_rows, whole_rows = task_updates((task,))
            for row in plain_rows:
                plain.append((*row, lease.shard, lease.epoch))
            for row in whole_rows:
                whole.append((*row, lease.shard, lease.epoch))
        self.updates = [
            (sql, _json_encode(rows).decode())
            for sql, rows in ((UPDATE_PLAIN_TASKS_FENCED, plain), (UPDATE_TASKS_FENCED, whole))
            if rows
        ]
        self.locked = _json_encode([[job_id] for job_id in sorted(jobs)]).decode()
        self.recounted = _json_encode(list(jobs.items())).decode()
        # Set by the write: the shard of each task row the fence refused, by task id, and
        # how many rows had no task left to update (their job was deleted).
        self.refused: dict[int, int] = {}
        self.gone = 0

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
        self.statements: WriteStatements = STATEMENTS._replace(
            insert_fresh_tasks=INSERT_FRESH_TASKS, insert_tasks=INSERT_TASKS
        )
        self._tasks: dict[int, tuple[TaskRecord, ShardLease]] = {}
        self._jobs: dict[int, JobStatus | None] = {}
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
        """The insert rows of a new job's tasks: the single gateway's
        (:func:`pm.store._rows.task_rows`), each with its shard (the device is column 4)."""
        fresh, whole = task_rows(tasks)
        return (
            [(*row, self.shard_of(row[3])) for row in fresh],
            [(*row, self.shard_of(row[3])) for row in whole],
        )

    def take_window(self) -> ClusterWindow:
        """The changes recorded since the last window, as rows (on the trio thread)."""
        window = ClusterWindow(self._tasks, self._jobs)
        self._tasks, self._jobs = {}, {}
        return window

    def give_back(self, failed: ClusterWindow) -> None:
        """A commit failed: its changes are written with the next (the newer record of a
        task is the same object, so nothing goes backwards)."""
        for task_id, change in failed.tasks.items():
            self._tasks.setdefault(task_id, change)
        for job_id, status in failed.jobs.items():
            self._jobs.setdefault(job_id, status)

    def write(self, connection: Connection, window: ClusterWindow) -> int:
        """Write ``window`` in the transaction under way (the store's worker thread);
        returns how many rows were sent. Fills ``window.refused``."""
        written: set[int] = set()
        for sql, rows_json in window.updates:
            written.update(
                task_id
                for (task_id,) in connection.execute(sql, (rows_json, self.gateway_id)).fetchall()
            )
        missing = [task_id for task_id in window.tasks if task_id not in written]
        if missing:
            # A row the fence refused, or no row at all: its job was deleted meanwhile (a
            # DELETE of a running job on any gateway), which is no sign of a lost lease.
            existing = {
                int(task_id)
                for (task_id,) in connection.execute(_EXISTING_TASKS, (missing,)).fetchall()
            }
            window.refused = {
                task_id: window.tasks[task_id][1].shard
                for task_id in missing
                if task_id in existing
            }
            window.gone = len(missing) - len(window.refused)
        if window.jobs:
            connection.execute(LOCK_JOBS, (window.locked,)).fetchall()
            connection.execute(RECOUNT_JOBS, (window.recounted,))
        return len(window.tasks) + len(window.jobs)

    def committed(self, window: ClusterWindow) -> None:
        """After the commit took ``window`` (on the trio thread): count the refused rows and
        report their shards."""
        if window.refused:
            self.refused_rows += len(window.refused)
            self.on_refused(set(window.refused.values()))

    # -- what job actors record (through a ShardRecorder) ------------------------------------

    def task_changed(self, task: TaskRecord, lease: ShardLease) -> None:
        self._tasks[task.id] = (task, lease)
        self.mark_dirty()

    def job_changed(self, record: JobRecord) -> None:
        self._jobs[record.id] = record.status if record.final else None
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
