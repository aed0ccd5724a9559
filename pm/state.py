"""Job and task state: transitions, counts and progress, as plain objects without I/O.

The job actor owns one :class:`JobRecord` and is the only writer; every transition method
returns whether anything changed, so the actor knows what to tell watchers. Invariants kept
here and checked by ``tests/test_state.py``:

- a task reaches exactly one final status, and never leaves it;
- ``done_count == finish_count + error_count`` and equals the number of final tasks;
- job progress is the floor of the mean of task progress (100 for a settled task);
- ``pending_count`` and ``sent_count`` are the tasks in those statuses, ``expired_count``
  those that ended ``expired`` (also counted in ``error_count``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from .schemas import (
    FINAL_TASK_STATUSES,
    BatchEntry,
    JobStatus,
    JobView,
    TaskState,
    TaskStatus,
    TaskView,
    WaitingReason,
)


def iso_timestamp(epoch_seconds: float) -> str:
    """``2011-12-19T15:28:46.493Z``: ISO 8601, UTC, milliseconds, ``Z``."""
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class TaskRecord:
    """One command to one device. ``data`` is shared with the batch entry (not copied)."""

    __slots__ = (
        "created_at",
        "data",
        "device",
        "entry",
        "expires_at",
        "finish_at",
        "id",
        "job_id",
        "method",
        "progress",
        "resource",
        "result",
        "sends",
        "sent_at",
        "status",
        "timeout",
        "tunnel",
        "waiting",
    )

    def __init__(
        self,
        *,
        task_id: int,
        job_id: int,
        entry: int,
        device: str,
        method: str,
        resource: str,
        data: Any,
        tunnel: str,
        timeout: float,
        created_at: float,
        expires_at: float | None = None,
    ) -> None:
        self.id = task_id
        self.job_id = job_id
        self.entry = entry  # position of its batch entry in the job
        self.device = device
        self.method = method
        self.resource = resource
        self.data = data
        self.tunnel = tunnel
        self.timeout = timeout
        self.created_at = created_at
        self.finish_at: float | None = None
        self.status: TaskStatus = "pending"
        self.progress = 0
        self.result: Any = None
        # Epoch seconds by which the task must have been sent, else it ends "expired".
        self.expires_at = expires_at
        # Why a pending task is not sent yet (stored: a restarted gateway shows the same).
        self.waiting: WaitingReason | None = None
        # Copies of the request published (re-sends keep the id), and when the first one
        # left (epoch seconds): the task timeout counts from it, across re-sends and restarts.
        self.sends = 0
        self.sent_at: float | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_TASK_STATUSES

    def view(self) -> TaskView:
        return TaskView(
            id=self.id,
            method=self.method,
            resource=self.resource,
            tunnel=self.tunnel,
            data=self.data,
            destination=self.device,
            task=TaskState(
                created_at=iso_timestamp(self.created_at),
                finish_at=None if self.finish_at is None else iso_timestamp(self.finish_at),
                timeout=self.timeout,
                status=self.status,
                progress=self.progress,
                result=self.result,
                expires_at=None if self.expires_at is None else iso_timestamp(self.expires_at),
                waiting=self.waiting,
                sends=self.sends,
            ),
        )


class TaskSelection(msgspec.Struct, frozen=True, kw_only=True):
    """A page of a job's tasks: filters (``None``: any) that must all hold, in job order."""

    status: TaskStatus | None = None
    device: str | None = None  # a normalized id
    waiting: WaitingReason | None = None
    limit: int = 100
    offset: int = 0


class JobRecord:
    """A job's tasks and aggregate state.

    Args:
      job_id: the job's id.
      tasks: in dispatch order (entry order, then destination order).
      timeout: job timeout in seconds, ``None`` for none.
      created_at: wall-clock epoch seconds.
    """

    def __init__(
        self, job_id: int, tasks: list[TaskRecord], timeout: float | None, created_at: float
    ) -> None:
        if not tasks:
            raise ValueError("a job has at least one task")
        self.id = job_id
        self.tasks = tasks
        self.timeout = timeout
        self.created_at = created_at
        self.finish_at: float | None = None
        self.status: JobStatus = "pending"
        self.finish_count = 0
        self.error_count = 0
        self.pending_count = len(tasks)
        self.sent_count = 0
        self.expired_count = 0
        self._progress_sum = 0
        self._by_id = {task.id: task for task in tasks}

    @classmethod
    def restore(
        cls,
        job_id: int,
        tasks: list[TaskRecord],
        timeout: float | None,
        created_at: float,
        status: JobStatus,
        finish_at: float | None,
    ) -> JobRecord:
        """Rebuild a job from stored tasks. Counts and progress are recomputed from the
        tasks, never trusted from storage, so a restored job always agrees with its tasks."""
        record = cls(job_id, tasks, timeout, created_at)
        record.pending_count = 0
        for task in tasks:
            record._progress_sum += task.progress
            if task.status == "resolved":
                record.finish_count += 1
            elif task.final:
                record.error_count += 1
            if task.status == "pending":
                record.pending_count += 1
            elif task.status == "sent":
                record.sent_count += 1
            elif task.status == "expired":
                record.expired_count += 1
        record.status = status
        record.finish_at = finish_at
        return record

    # -- reading -----------------------------------------------------------------------

    @property
    def final(self) -> bool:
        return self.finish_at is not None

    @property
    def done_count(self) -> int:
        return self.finish_count + self.error_count

    @property
    def progress(self) -> int:
        return self._progress_sum // len(self.tasks)

    def task(self, task_id: int) -> TaskRecord | None:
        return self._by_id.get(task_id)

    def view(self, collection: str | None = "ids") -> JobView:
        """The job object; ``collection`` is ``"ids"``, ``"tasks"`` or ``None`` (omitted)."""
        view = JobView(
            id=self.id,
            created_at=iso_timestamp(self.created_at),
            finish_at=None if self.finish_at is None else iso_timestamp(self.finish_at),
            timeout=self.timeout,
            status=self.status,
            progress=self.progress,
            total_count=len(self.tasks),
            done_count=self.done_count,
            finish_count=self.finish_count,
            error_count=self.error_count,
            pending_count=self.pending_count,
            sent_count=self.sent_count,
            expired_count=self.expired_count,
        )
        if collection == "ids":
            view.collection = [task.id for task in self.tasks]
        elif collection == "tasks":
            view.collection = [task.view() for task in self.tasks]
        return view

    def select_tasks(self, selection: TaskSelection) -> tuple[list[TaskView], int]:
        """One page of the tasks matching every filter of ``selection``, in job order, and
        how many match in all. One pass over the job's tasks."""
        status, device, waiting = selection.status, selection.device, selection.waiting
        matching = [
            task
            for task in self.tasks
            if (status is None or task.status == status)
            and (device is None or task.device == device)
            and (waiting is None or task.waiting == waiting)
        ]
        first = selection.offset
        return [task.view() for task in matching[first : first + selection.limit]], len(matching)

    # -- transitions -------------------------------------------------------------------

    def mark_sent(self, task: TaskRecord, now: float, *, published: bool = True) -> bool:
        """The request left for the device at ``now`` (epoch seconds); ``published``: the MQTT
        client took the copy (it counts in ``sends``)."""
        if task.status != "pending" or self.final:
            return False
        task.status = "sent"
        task.sent_at = now
        task.sends += published
        task.waiting = None
        self.pending_count -= 1
        self.sent_count += 1
        if self.status == "pending":
            self.status = "dispatching"
        return True

    def mark_resent(self, task: TaskRecord) -> bool:
        """One more copy of a sent task's request was published."""
        if task.status != "sent":
            return False
        task.sends += 1
        return True

    def mark_waiting(self, task: TaskRecord, reason: WaitingReason) -> bool:
        """The task is queued but not sent, for ``reason``."""
        if task.status != "pending" or task.waiting == reason:
            return False
        task.waiting = reason
        return True

    def mark_progress(self, task: TaskRecord, progress: int) -> bool:
        """An interim (206) answer. Progress only moves forward and stays below 100."""
        if task.status != "sent":
            return False
        progress = min(progress, 99)
        if progress <= task.progress:
            return False
        self._progress_sum += progress - task.progress
        task.progress = progress
        return True

    def settle(self, task: TaskRecord, status: TaskStatus, result: Any, now: float) -> bool:
        """Give a task its final status. Returns False if it was already final.

        The job resolves when its last task settles.
        """
        if status not in FINAL_TASK_STATUSES:
            raise ValueError(f"{status!r} is not a final task status")
        if task.final:
            return False
        if task.status == "pending":
            self.pending_count -= 1
        else:
            self.sent_count -= 1
        if status == "expired":
            self.expired_count += 1
        task.status = status
        task.waiting = None
        task.result = result
        task.finish_at = now
        self._progress_sum += 100 - task.progress
        task.progress = 100
        if status == "resolved":
            self.finish_count += 1
        else:
            self.error_count += 1
        if self.done_count == len(self.tasks) and not self.final:
            self.status = "resolved"
            self.finish_at = now
        return True

    def finish(self, status: JobStatus, now: float) -> list[TaskRecord]:
        """End the job early (``timeout`` or ``cancelled``): every unsettled task ends with
        that same status and a null result. Returns the tasks that changed."""
        if status not in ("timeout", "cancelled"):
            raise ValueError(f"a job is finished early only by timeout or cancel, not {status!r}")
        if self.final:
            return []
        changed = [task for task in self.tasks if not task.final]
        for task in changed:
            self.settle(task, status, None, now)
        self.status = status
        self.finish_at = now
        return changed


def expires_in_default(job_expires_in: float | None, configured: float) -> float | None:
    """The ``expiresIn`` of a job's entries that set none: the job's own, else the
    configured ``tasks.default_expires_in`` (``inf``: none)."""
    if job_expires_in is not None:
        return job_expires_in
    return None if math.isinf(configured) else configured


def expand_batch(
    job_id: int,
    batch: list[BatchEntry],
    *,
    next_task_id: Callable[[], int],
    tunnel_for: Callable[[str], str],
    default_timeout: float,
    now: float,
    default_expires_in: float | None = None,
) -> list[TaskRecord]:
    """One task per entry x destination, in entry order then destination order.

    Args:
      next_task_id: returns a fresh task id per call.
      tunnel_for: the answer topic of a device.
      default_expires_in: ``expiresIn`` of entries that set none (the job's, else the
        ``[tasks]`` default), ``None`` for no expiry.
      now: ``createdAt`` of every task, epoch seconds (the caller's wall clock).
    """
    created_at = now
    tasks = []
    for position, entry in enumerate(batch):
        timeout = default_timeout if entry.timeout is None else entry.timeout
        expires_in = default_expires_in if entry.expires_in is None else entry.expires_in
        expires_at = None if expires_in is None else created_at + expires_in
        for device in entry.devices:
            tasks.append(
                TaskRecord(
                    task_id=next_task_id(),
                    job_id=job_id,
                    entry=position,
                    device=device,
                    method=entry.method,
                    resource=entry.resource,
                    data=entry.data,
                    tunnel=tunnel_for(device),
                    timeout=timeout,
                    created_at=created_at,
                    expires_at=expires_at,
                )
            )
    return tasks
