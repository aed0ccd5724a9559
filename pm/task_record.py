"""One task: one command to one device, as the job actor holds it (pm.state holds the job)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from .job_options import AttemptView
from .schemas import FINAL_TASK_STATUSES, TaskState, TaskStatus, TaskView, WaitingReason

#: Request ids of retries: attempt ``n`` (from 1) of task ``t`` goes out as
#: ``t + (n-1) * 2**40``, so that a device ignoring repeated ids still executes it, ids never
#: collide with another task's (task ids stay far below 2**40) and stay exact as JSON numbers
#: (below 2**53 for the at most 11 attempts).
RETRY_ID_STRIDE = 2**40


def iso_timestamp(epoch_seconds: float) -> str:
    """``2011-12-19T15:28:46.493Z``: ISO 8601, UTC, milliseconds, ``Z``."""
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class TaskRecord:
    """One command to one device. ``data`` is shared with the batch entry (not copied)."""

    __slots__ = (
        "attempts",
        "code",
        "created_at",
        "data",
        "device",
        "entry",
        "expires_at",
        "finish_at",
        "id",
        "job_id",
        "method",
        "next_attempt_at",
        "previous_attempts",
        "progress",
        "resource",
        "rollout_columns_stored",
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
        # The answer code of a final task that got one (its outcome histogram key).
        self.code: int | None = None
        # Epoch seconds by which the task must have been sent, else it ends "expired".
        self.expires_at = expires_at
        # Why a pending task is not sent yet (stored: a restarted gateway shows the same).
        self.waiting: WaitingReason | None = None
        # Copies of the request published (re-sends keep the id), and when the first one
        # left (epoch seconds): the task timeout counts from it, across re-sends and restarts.
        self.sends = 0
        self.sent_at: float | None = None
        # Attempts sent (counted when sent); the epoch seconds before which the next attempt
        # waits (retry backoff); the earlier attempts of a retried task, oldest first.
        self.attempts = 0
        self.next_attempt_at: float | None = None
        self.previous_attempts: list[AttemptView] | None = None
        # Whether the store may hold something in this task's waiting, next_attempt_at or
        # previous_attempts columns (set by pm.store._rows; until then its writes leave them
        # out).
        self.rollout_columns_stored = False

    @property
    def final(self) -> bool:
        return self.status in FINAL_TASK_STATUSES

    @property
    def request_id(self) -> int:
        """The Sanji request id of the attempt going out now: the task id for the first; a new
        id for each retry (pm.rollout.request_id); a task already sent keeps its own."""
        attempt = self.attempts if self.status == "sent" else self.attempts + 1
        return self.id if attempt <= 1 else self.id + (attempt - 1) * RETRY_ID_STRIDE

    def view(self, job_reason: WaitingReason | None = None) -> TaskView:
        """The task as the API shows it. ``job_reason``: why its job holds it up, shown when
        it is pending without a reason of its own (:meth:`pm.state.JobRecord.task_view`)."""
        waiting = self.waiting
        if waiting is None and self.status == "pending":
            waiting = job_reason
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
                waiting=waiting,
                sends=self.sends,
                sent_at=None if self.sent_at is None else iso_timestamp(self.sent_at),
                attempts=self.attempts,
                next_attempt_at=None
                if self.next_attempt_at is None
                else iso_timestamp(self.next_attempt_at),
                previous_attempts=msgspec.UNSET
                if self.previous_attempts is None
                else self.previous_attempts,
            ),
        )
