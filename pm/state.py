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

from collections.abc import Callable
from typing import Any

import msgspec

from .batch_expansion import expand_batch as expand_batch
from .batch_expansion import expires_in_default as expires_in_default
from .job_options import DEFAULT_OPTIONS, AttemptView, HoldReason, JobOptions
from .outcomes import OutcomeCounter, SettleRate, summary_outcome
from .rollout import AbortWatch, Pacer, RolloutState
from .schemas import (
    FINAL_TASK_STATUSES,
    JobStatus,
    JobView,
    TaskStatus,
    TaskView,
    WaitingReason,
)
from .task_record import RETRY_ID_STRIDE as RETRY_ID_STRIDE
from .task_record import TaskRecord as TaskRecord
from .task_record import iso_timestamp as iso_timestamp


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
      options: its rollout options (stored with it).
    """

    def __init__(
        self,
        job_id: int,
        tasks: list[TaskRecord],
        timeout: float | None,
        created_at: float,
        options: JobOptions = DEFAULT_OPTIONS,
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
        self.retried_count = 0
        self.options = options
        # Why sending is held (see pm.job_options.HoldReason), in the order set.
        self.holds: list[HoldReason] = []
        # The status the job ends with when its last task settles: "resolved", unless it is
        # being stopped (a graceful cancel or an abort) while tasks finish in flight.
        self.ending: JobStatus = "resolved"
        # The durable part of its rollout (ramp, trips), and the live pacing and abort
        # criteria its job actor keeps (shown in the view).
        self.rollout_state = RolloutState()
        self.pacer: Pacer | None = None
        self.abort_watch: AbortWatch | None = None
        # Why a pending task with no reason of its own waits, if it is still in its job's
        # queue: the job's window or rate, read when the task is read (set by a paced job's
        # actor), so nothing is written when the window moves.
        self.queued_reason: Callable[[TaskRecord], WaitingReason | None] | None = None
        self._progress_sum = 0
        self.outcomes = OutcomeCounter()
        self.settle_rate = SettleRate()  # a restored job measures its rate afresh
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
        options: JobOptions = DEFAULT_OPTIONS,
    ) -> JobRecord:
        """Rebuild a job from stored tasks. Counts and progress are recomputed from the
        tasks, never trusted from storage, so a restored job always agrees with its tasks."""
        record = cls(job_id, tasks, timeout, created_at, options)
        record.pending_count = 0
        for task in tasks:
            if task.attempts > 1:
                record.retried_count += 1
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
            if task.final:
                record.outcomes.add(task.status, task.code)
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

    def eta(self) -> float | None:
        """Epoch seconds the last task should settle at, at the observed rate (``None``
        once final)."""
        return None if self.final else self.settle_rate.eta(len(self.tasks) - self.done_count)

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
            retried_count=self.retried_count,
            holds=list(self.holds),
            rollout=msgspec.UNSET if self.pacer is None else self.pacer.status(),
            abort=msgspec.UNSET if self.abort_watch is None else self.abort_watch.status(),
            stopped_by=msgspec.UNSET if not self.options.abort else self.rollout_state.stopped_by,
            outcomes=self.outcomes.histogram(),
            outcome=summary_outcome(
                final=self.final, total=len(self.tasks), resolved=self.finish_count
            ),
            eta=None if (eta := self.eta()) is None else iso_timestamp(eta),
        )
        if collection == "ids":
            view.collection = [task.id for task in self.tasks]
        elif collection == "tasks":
            view.collection = [self.task_view(task) for task in self.tasks]
        return view

    def waiting_reason(self, task: TaskRecord) -> WaitingReason | None:
        """Why ``task`` is not sent yet, as the API shows it: its own reason (stored: its
        device's, a retry's backoff, its job's hold, the fleet budget), else, while it is
        pending in its job's queue, its job's window or rate (:attr:`queued_reason`)."""
        if task.waiting is not None or task.status != "pending" or self.queued_reason is None:
            return task.waiting
        return self.queued_reason(task)

    def task_view(self, task: TaskRecord) -> TaskView:
        if self.queued_reason is None:
            return task.view()
        return task.view(self.waiting_reason(task))

    def select_tasks(self, selection: TaskSelection) -> tuple[list[TaskView], int]:
        """One page of the tasks matching every filter of ``selection``, in job order, and
        how many match in all. One pass over the job's tasks."""
        status, device, waiting = selection.status, selection.device, selection.waiting
        matching = [
            task
            for task in self.tasks
            if (status is None or task.status == status)
            and (device is None or task.device == device)
            and (waiting is None or self.waiting_reason(task) == waiting)
        ]
        first = selection.offset
        page = matching[first : first + selection.limit]
        return [self.task_view(task) for task in page], len(matching)

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
        task.attempts += 1
        task.next_attempt_at = None
        if task.attempts == 2:
            self.retried_count += 1
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

    def settle(
        self, task: TaskRecord, status: TaskStatus, result: Any, now: float, code: int | None = None
    ) -> bool:
        """Give a task its final status (``code``: its answer's, if any). Returns False if it
        was already final.

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
        task.code = code
        self.outcomes.add(status, code)
        self.settle_rate.observe(now)
        self._progress_sum += 100 - task.progress
        task.progress = 100
        if status == "resolved":
            self.finish_count += 1
        else:
            self.error_count += 1
        if self.done_count == len(self.tasks) and not self.final:
            self.status = self.ending
            self.finish_at = now
        return True

    def clear_waiting(self, task: TaskRecord) -> bool:
        """The task is handed to its device with nothing to wait for."""
        if task.waiting is None:
            return False
        task.waiting = None
        return True

    def retry_later(
        self, task: TaskRecord, status: TaskStatus, result: Any, now: float, next_at: float
    ) -> bool:
        """An attempt ended ``status`` and the task is sent again at ``next_at`` (epoch
        seconds): the attempt joins the task's history and the task is pending again."""
        if task.status != "sent" or self.final:
            return False
        history = task.previous_attempts if task.previous_attempts is not None else []
        history.append(
            AttemptView(
                attempt=task.attempts,
                request_id=task.id + (task.attempts - 1) * RETRY_ID_STRIDE,
                status=status,
                result=result,
                finish_at=iso_timestamp(now),
                sends=task.sends,
            )
        )
        task.previous_attempts = history
        # `sends` counts the copies of the current attempt; the next one starts again at 0.
        task.sends = 0
        task.status = "pending"
        task.waiting = "retry-backoff"
        task.next_attempt_at = next_at
        self._progress_sum -= task.progress
        task.progress = 0
        task.result = None
        self.sent_count -= 1
        self.pending_count += 1
        return True

    def set_holds(self, holds: list[HoldReason]) -> None:
        """Sending is held for ``holds`` (empty: it may send); the status follows: ``paused``
        or ``scheduled`` while so held, else back to ``pending``/``dispatching``."""
        self.holds = list(holds)
        if self.final:
            return
        if "paused" in holds:
            self.status = "paused"
        elif "scheduled" in holds:
            self.status = "scheduled"
        else:
            untouched = self.pending_count == len(self.tasks) and not any(
                task.attempts for task in self.tasks
            )
            self.status = "pending" if untouched else "dispatching"

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
