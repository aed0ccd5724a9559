"""One task on one device as a pure state machine, and the reports a device sends its job.

A device actor (:mod:`pm.devices`) owns one :class:`TaskMachine` per task it has in flight.
The machine does no I/O, reads no clock and knows nothing of trio: the actor feeds it what
happened (an answer arrived, the task timed out) and reports what the returned decision says.

The reports (:class:`TaskWaiting`, :class:`TaskSent`, :class:`TaskResent`,
:class:`TaskProgress`, :class:`TaskSettled`) are the only messages a device actor sends to a
job actor's mailbox. They live here, beside the machine that decides them, so that
:mod:`pm.jobs` and :mod:`pm.devices` both import them and never each other.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .protocol import PROGRESS_CODE, SanjiAnswer, answer_progress, error_result, is_success
from .schemas import TaskStatus, WaitingReason

# -- reports from device actors to job actors -----------------------------------------------


class TaskWaiting(msgspec.Struct, frozen=True, tag=True):
    """The task's turn came but it cannot be sent yet, for ``reason``."""

    task_id: int
    reason: WaitingReason


class TaskSent(msgspec.Struct, frozen=True, tag=True):
    """The task's request left for its device: ``published`` is whether the MQTT client took
    the copy (false while its connection is down: the copy then goes out when it is back)."""

    task_id: int
    published: bool = True


class TaskResent(msgspec.Struct, frozen=True, tag=True):
    """One more copy of the task's request was published (its device came back, or the
    gateway's broker connection did), with the same id."""

    task_id: int


class TaskProgress(msgspec.Struct, frozen=True, tag=True):
    """An interim answer (206) reported ``progress`` percent."""

    task_id: int
    progress: int


class TaskSettled(msgspec.Struct, frozen=True, tag=True):
    """The task reached a final status (resolved, error, timeout, or expired unsent)."""

    task_id: int
    status: TaskStatus
    result: Any
    # The device's answer code, when an answer settled it (the outcome histogram's key).
    code: int | None = None


class TaskHeldBack(msgspec.Struct, frozen=True, tag=True):
    """The task's turn came while its job held sending (paused, stopping): it was not sent,
    and the device moved on. Its job queues it again when it may send."""

    task_id: int


def expired_unsent(task_id: int, waiting: WaitingReason | None) -> TaskSettled:
    """The task was still unsent at its ``expiresAt``: it ends ``expired``, its result saying
    what it was waiting for."""
    return TaskSettled(
        task_id, "expired", {"error": "expired before it could be sent", "waiting": waiting}
    )


#: Everything a device actor may tell a job actor.
TaskReport = TaskWaiting | TaskSent | TaskResent | TaskProgress | TaskSettled | TaskHeldBack


# -- the machine ----------------------------------------------------------------------------


class TaskMachine:
    """What one in-flight task does with each answer; no I/O, no clock, no trio.

    Args:
      task_id: the task the reports are about.
      request_id: the id the device's answers must carry (default: ``task_id``; a retry
        goes out with an id of its own, see :attr:`pm.state.TaskRecord.request_id`).

    When to re-send is not its business: a copy goes out when the device comes back (see
    :mod:`pm.in_flight`), never on a timer, and any copy's answer is handled the same way.
    """

    __slots__ = ("request_id", "task_id")

    def __init__(self, task_id: int, request_id: int | None = None) -> None:
        self.task_id = task_id
        # The id the request went out with: the task id, or a retry's own id.
        self.request_id = task_id if request_id is None else request_id

    def on_answer(self, answer: SanjiAnswer) -> TaskProgress | TaskSettled | None:
        """A message the device sent on its answer topic.

        Returns the report for the job: :class:`TaskProgress` for a usable interim answer,
        :class:`TaskSettled` for a final one (the task is then over), ``None`` for an answer
        to another task id or a 206 without a usable progress.
        """
        if answer.id != self.request_id:
            return None
        if answer.code == PROGRESS_CODE:
            progress = answer_progress(answer)
            return None if progress is None else TaskProgress(self.task_id, progress)
        if is_success(answer.code):
            return TaskSettled(self.task_id, "resolved", answer.data, answer.code)
        return TaskSettled(self.task_id, "error", error_result(answer), answer.code)

    def on_timeout(self) -> TaskSettled:
        """The task's own timeout passed without a final answer."""
        return TaskSettled(self.task_id, "timeout", None)
