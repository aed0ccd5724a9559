"""``POST /jobs/{id}/retry``: the request of a new job that sends a finished job's commands
again to the tasks that did not resolve.

Pure: from the job's record (its tasks keep their batch entry's method, resource, data,
timeout and expiry) to a :class:`~pm.schemas.JobRequest` with the same job options; the
engine submits it like any other job (same limits, same validation).

Error handling: :class:`NothingToRetry` (a 409) for a job still running or with no task in
the statuses asked for, and for a schedule that has already ended.
"""

from __future__ import annotations

from datetime import UTC, datetime

from .schemas import BatchEntry, JobRequest, TaskStatus
from .state import JobRecord

#: The statuses retried when none is named: every final status but ``resolved``.
DEFAULT_RETRY_STATUSES: tuple[TaskStatus, ...] = ("error", "timeout", "expired", "cancelled")


class NothingToRetry(Exception):
    """The job cannot be retried as asked; the message says why."""


def retry_request(record: JobRecord, statuses: tuple[TaskStatus, ...], now: float) -> JobRequest:
    """The new job: per batch entry of ``record``, its command to the devices whose task
    ended in one of ``statuses``, in the original order; the job's timeout and options.

    Args:
      now: wall-clock epoch seconds (a schedule that ended before can run nothing).
    """
    if not record.final:
        raise NothingToRetry(
            f"job {record.id} is {record.status}: retry it once it has finished (or cancel it)"
        )
    chosen = [task for task in record.tasks if task.status in statuses]
    if not chosen:
        raise NothingToRetry(
            f"job {record.id} has no task that ended {' or '.join(statuses)}: nothing to retry"
        )
    schedule = record.options.schedule
    if schedule is not None and schedule.end_at is not None:
        if schedule.end_at <= datetime.fromtimestamp(now, UTC):
            raise NothingToRetry(
                f"job {record.id}'s schedule ended at {schedule.end_at.isoformat()}: a retry "
                "with it would send nothing; submit a new job with a new schedule"
            )
    entries: dict[int, BatchEntry] = {}
    for task in chosen:
        entry = entries.get(task.entry)
        if entry is None:
            expires_in = None if task.expires_at is None else task.expires_at - task.created_at
            entries[task.entry] = BatchEntry(
                method=task.method,
                resource=task.resource,
                destination=[task.device],
                data=task.data,
                timeout=task.timeout,
                expires_in=expires_in,
            )
        else:
            entry.devices.append(task.device)
    options = record.options
    return JobRequest(
        batch=[entries[position] for position in sorted(entries)],
        timeout=record.timeout,
        rollout=options.rollout,
        abort=options.abort,
        retry=options.retry,
        priority=options.priority,
        schedule=options.schedule,
    )
