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

from .job_options import HoldReason
from .schemas import JobView, WaitingReason
from .state import JobRecord, TaskRecord
from .task_machine import TaskReport


class JobStateError(Exception):
    """The job is not in a state that allows the request (pause a paused job, resume one that
    is not paused, pause/resume/cancel a finished job). The HTTP layer answers 409."""


class Refused(msgspec.Struct, frozen=True):
    """A request the job actor refused: why, in a sentence (raised as JobStateError)."""

    message: str


class SendGate:
    """Whether a job may send now: written by its job actor only, read by device actors when a
    task's turn comes (a task whose job holds goes back unsent: ``TaskHeldBack``)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = False


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


class SetHold(msgspec.Struct, frozen=True, tag=True):
    """Hold sending for ``reason`` (paused by a user; scheduled or outside its windows by a
    schedule): nothing new is sent while any hold is set, tasks in flight finish. Answers
    the job's snapshot, or :class:`Refused` (the job is final, or already held so by a user
    pause)."""

    reason: HoldReason
    reply: Reply[JobView | Refused]


class ClearHold(msgspec.Struct, frozen=True, tag=True):
    """Clear the hold ``reason``; sending resumes once no hold is left. Answers the job's
    snapshot, or :class:`Refused` (the job is final, or a user resume of a job not paused)."""

    reason: HoldReason
    reply: Reply[JobView | Refused]


class StopJob(msgspec.Struct, frozen=True, tag=True):
    """Stop the job gracefully: tasks not sent end ``cancelled``, tasks in flight finish
    normally, and the job ends ``cancelled`` once they have. Answers the snapshot at once
    (not final while tasks are in flight), or :class:`Refused` (the job is final)."""

    reply: Reply[JobView | Refused]


#: What a job actor's mailbox accepts: reports from device actors, and requests.
JobActorMessage = (
    TaskReport | CancelJob | ReportsApplied | ExpiryDue | SetHold | ClearHold | StopJob
)


class TaskDispatcher(Protocol):
    """What a job needs of the device actors (:class:`pm.devices.Fleet`)."""

    async def dispatch(
        self,
        task: TaskRecord,
        reports: ActorRef[TaskReport],
        gate: SendGate | None = None,
        *,
        high_priority: bool = False,
    ) -> None:
        """Queue ``task`` on its device (may wait: back-pressure); reports go to ``reports``.
        A ``gate`` held when the task's turn comes sends it back unsent (``TaskHeldBack``);
        a high-priority task goes ahead of normal ones waiting for the same device."""
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

    def parked(self, task: TaskRecord) -> bool:
        """Whether ``task``'s turn has come and it waits, unsent, for its device to be online."""
        ...

    def release_parked(self, job_id: int) -> int:
        """The job's tasks parked for their device stop waiting (the job settled them);
        returns how many there were."""
        ...


class ChangeRecorder(Protocol):
    """Where a job's changes are recorded for persistence (:class:`pm.store.Store`).

    Both calls are synchronous and must not wait: they run on the dispatch path.
    """

    def task_changed(self, task: TaskRecord) -> None: ...

    def job_changed(self, record: JobRecord) -> None: ...
