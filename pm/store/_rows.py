"""The mapping between rows and records (the write statements are in :mod:`._statements`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from ..job_options import DEFAULT_OPTIONS, AttemptView, JobOptions
from ..job_wide_view import add_stored_figures
from ..outcomes import OutcomeHistogram, summary_outcome
from ..presence import DevicePresence, Presence
from ..rollout import RolloutState
from ..schemas import JobView
from ..state import JobRecord, TaskRecord, iso_timestamp
from ._statements import DEVICE_COLUMNS as DEVICE_COLUMNS
from ._statements import JOB_COLUMNS as JOB_COLUMNS

if TYPE_CHECKING:
    from ._connection import Connection

Row = tuple[Any, ...]

_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode


def job_view(row: tuple[Any, ...], task_ids: list[int]) -> JobView:
    (job_id, created_at, finish_at, timeout, status, total, finished, errors, progress) = row[:9]
    pending, sent, expired, options, holds, _, rollout_state, outcomes, outcome, eta = row[9:19]
    state = (
        RolloutState() if rollout_state is None else _json_decode(rollout_state, type=RolloutState)
    )
    decoded = DEFAULT_OPTIONS if options is None else _json_decode(options, type=JobOptions)
    view = JobView(
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
        holds=[] if holds is None else _json_decode(holds),
        stopped_by=state.stopped_by if decoded.abort else msgspec.UNSET,
        outcomes=OutcomeHistogram() if outcomes is None else _decode_outcomes(outcomes),
        outcome=outcome,
        eta=None if eta is None else iso_timestamp(eta),
        collection=task_ids,
    )
    add_stored_figures(view, decoded, state, retried=row[19])
    return view


def _decode_outcomes(text: str) -> OutcomeHistogram:
    return _json_decode(text, type=OutcomeHistogram)


def _outcome_columns(record: JobRecord) -> tuple[Any, ...]:
    """outcomes (JSON), outcome, eta of a job (without building its whole view)."""
    outcome = summary_outcome(
        final=record.final, total=len(record.tasks), resolved=record.finish_count
    )
    return _json_encode(record.outcomes.histogram()).decode(), outcome, record.eta()


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
        None if record.options == DEFAULT_OPTIONS else _json_encode(record.options).decode(),
        *_rollout_columns(record),
        *_outcome_columns(record),
        record.retried_count,
    )


def _rollout_columns(record: JobRecord) -> tuple[Any, ...]:
    """holds, ending, rollout_state of a job (NULL when there is nothing to keep)."""
    state = _json_encode(record.rollout_state)  # its defaults omitted: b"{}" is no state
    return (
        _json_encode(record.holds).decode() if record.holds else None,
        record.ending,
        None if state == b"{}" else state.decode(),
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
        *_rollout_columns(record),
        *_outcome_columns(record),
        record.retried_count,
    )


def task_rows(tasks: Iterable[TaskRecord]) -> tuple[list[Row], list[Row]]:
    """The insert rows of new tasks: (fresh rows for ``insert_fresh_tasks``, whole rows for
    ``insert_tasks``). A fresh task is pending and never sent, with no answer code and no
    rollout column: its row carries what a job's creation decides, the table's defaults and
    the statement's constants fill the rest."""
    fresh: list[Row] = []
    whole: list[Row] = []
    for task in tasks:
        # First, unconditionally: it remembers that a whole row stores the rollout columns.
        if (
            not _rollout_columns_needed(task)
            and task.status == "pending"
            and task.sends == 0
            and task.attempts == 0
            and task.sent_at is None
            and task.code is None
        ):
            fresh.append(
                (task.id, task.job_id, task.entry, task.device, task.timeout, task.expires_at)
            )
        else:
            whole.append(
                (
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
                    *_attempt_columns(task),
                )
            )
    return fresh, whole


def task_updates(tasks: Iterable[TaskRecord]) -> tuple[list[Row], list[Row]]:
    """The update rows of changed tasks: (plain rows for ``update_plain_tasks``, whole rows
    for ``update_tasks``). A plain task never had a rollout column (``waiting``,
    ``next_attempt_at``, ``previous_attempts``) stored: they are NULL in the table and stay
    so."""
    plain: list[Row] = []
    whole: list[Row] = []
    for task in tasks:
        # The default path's test first, inline (a call per row otherwise): none of the
        # three is set and none was stored.
        if (
            task.waiting is not None
            or task.next_attempt_at is not None
            or task.previous_attempts is not None
            or task.rollout_columns_stored
        ) and _rollout_columns_needed(task):
            whole.append(
                (
                    task.id,
                    task.status,
                    task.progress,
                    result_text(task.result),
                    task.finish_at,
                    task.sends,
                    task.sent_at,
                    task.waiting,
                    *_attempt_columns(task),
                )
            )
        else:
            plain.append(
                (
                    task.id,
                    task.status,
                    task.progress,
                    result_text(task.result),
                    task.finish_at,
                    task.sends,
                    task.sent_at,
                    task.attempts,
                    task.code,
                )
            )
    return plain, whole


def _rollout_columns_needed(task: TaskRecord) -> bool:
    """Whether a row of ``task`` must carry its rollout columns: one holds something now, or
    did at an earlier write (the table may still hold it; a NULL must overwrite it). Once
    true, remembered on the task for good: a row written with them makes it true."""
    if not task.rollout_columns_stored and (
        task.waiting is not None
        or task.next_attempt_at is not None
        or task.previous_attempts is not None
    ):
        task.rollout_columns_stored = True
    return task.rollout_columns_stored


def _attempt_columns(task: TaskRecord) -> tuple[Any, ...]:
    """attempts, next_attempt_at, previous_attempts (JSON), code of a task."""
    previous = task.previous_attempts
    return (
        task.attempts,
        task.next_attempt_at,
        None if previous is None else _json_encode(previous).decode(),
        task.code,
    )


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


TASK_COLUMNS = (
    "id, entry, device, timeout, status, progress, result, finish_at, expires_at, sends, sent_at,"
    " waiting, attempts, next_attempt_at, previous_attempts, code"
)

# A device's tasks across jobs: TASK_COLUMNS, then what a task view needs from its job and
# batch entry (job id, the job's created_at, the entry's method, resource, data).
DEVICE_TASK_COLUMNS = (
    "t.id, t.entry, t.device, t.timeout, t.status, t.progress, t.result, t.finish_at,"
    " t.expires_at, t.sends, t.sent_at, t.waiting, t.attempts, t.next_attempt_at,"
    " t.previous_attempts, t.code, t.job_id, j.created_at, e.method, e.resource, e.data"
)
DEVICE_TASK_JOINS = (
    "FROM tasks t JOIN jobs j ON j.id = t.job_id"
    " JOIN entries e ON e.job_id = t.job_id AND e.position = t.entry"
)


def entries_of(connection: Connection, job_id: int) -> dict[int, tuple[str, str, Any]]:
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
    (task_id, entry, device, timeout, status, progress, result, finish_at, expires_at) = row[:9]
    sends, sent_at, waiting = row[9:12]
    attempts, next_attempt_at, previous_attempts, code = row[12:16]
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
    task.sends = sends
    task.sent_at = sent_at
    task.waiting = waiting
    task.attempts = attempts
    task.next_attempt_at = next_attempt_at
    task.code = code
    if previous_attempts is not None:
        task.previous_attempts = _json_decode(previous_attempts, type=list[AttemptView])
    # The next write must overwrite what the table holds in them, even once they are cleared.
    task.rollout_columns_stored = (
        waiting is not None or next_attempt_at is not None or previous_attempts is not None
    )
    return task


def load_records(
    connection: Connection,
    where: str,
    parameters: tuple[Any, ...],
    tunnel_for: Callable[[str], str],
) -> list[JobRecord]:
    records = []
    for job in connection.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY id", parameters
    ).fetchall():
        job_id, created_at = job[:2]
        entries = entries_of(connection, job_id)
        tasks = [
            task_record(row, job_id, created_at, entries[row[1]], tunnel_for)
            for row in connection.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE job_id = ? ORDER BY id", (job_id,)
            )
        ]
        records.append(restore_job(job, tasks))
    return records


def restore_job(job: Row, tasks: list[TaskRecord]) -> JobRecord:
    """A job from its row of ``JOB_COLUMNS`` and its tasks (all of them, or a clustered
    gateway's part of them)."""
    job_id, created_at, finish_at, timeout, status = job[:5]
    options, holds, ending, rollout_state = job[12:16]
    record = JobRecord.restore(
        job_id,
        tasks,
        timeout,
        created_at,
        status,
        finish_at,
        DEFAULT_OPTIONS if options is None else _json_decode(options, type=JobOptions),
    )
    record.holds = [] if holds is None else _json_decode(holds)
    record.ending = ending
    if rollout_state is not None:
        record.rollout_state = _json_decode(rollout_state, type=RolloutState)
    return record


def load_task_page(
    connection: Connection,
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
    entries = entries_of(connection, job_id) if rows else {}
    return [task_record(row, job_id, job[0], entries[row[1]], tunnel_for) for row in rows], int(
        total
    )
