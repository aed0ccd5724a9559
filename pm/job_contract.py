"""The job actor's contract: the messages its mailbox accepts, and what it needs of the
device side and of the store.

Device actors report with the :mod:`pm.task_machine` messages; the API and the job's own
expiry timer send the requests below. The collaborators are Protocols, so that
:mod:`pm.jobs` never imports :mod:`pm.devices` or :mod:`pm.store` (the engine wires them).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from actors import ActorRef, Reply

from .schemas import JobView, WaitingReason
from .state import JobRecord, TaskRecord
from .task_machine import TaskReport


class CancelJob(msgspec.Struct, frozen=True, tag=True):
    """From the API: end the job now, answer its final snapshot."""

    reply: Reply[JobView]


class ExpiryDue(msgspec.Struct, frozen=True, tag=True):
    """From the job's own expiry timer: tasks whose ``expiresAt`` is ``until`` (epoch
    seconds) or earlier end ``expired`` if they are still unsent."""

    until: float


class ReportsApplied(msgspec.Struct, frozen=True, tag=True):
    """Answered once every message queued before it has been applied (shutdown uses it to
    store what settled before the job actor stops)."""

    reply: Reply[None]


#: What a job actor's mailbox accepts: reports from device actors, and requests.
JobActorMessage = TaskReport | CancelJob | ReportsApplied | ExpiryDue


class TaskDispatcher(Protocol):
    """What a job needs of the device actors (:class:`pm.devices.Fleet`)."""

    async def dispatch(self, task: TaskRecord, reports: ActorRef[TaskReport]) -> None:
        """Queue ``task`` on its device (may wait: back-pressure); reports go to ``reports``."""
        ...

    def abandon(self, job_id: int) -> int:
        """Stop waiting on the job's tasks in flight or waiting for their device; returns how
        many there were."""
        ...

    def waiting_reason(self, device: str) -> WaitingReason | None:
        """Why a task queued for ``device`` now would wait behind another, if it would."""
        ...

    def holds(self, task: TaskRecord) -> bool:
        """Whether ``task``'s turn has come on its device (its actor decides its fate)."""
        ...


class ChangeRecorder(Protocol):
    """Where a job's changes are recorded for persistence (:class:`pm.store.Store`).

    Both calls are synchronous and must not wait: they run on the dispatch path.
    """

    def task_changed(self, task: TaskRecord) -> None: ...

    def job_changed(self, record: JobRecord) -> None: ...
