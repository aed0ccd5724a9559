"""One task on one device as a pure state machine, and the reports a device sends its job.

A device actor (:mod:`pm.devices`) owns one :class:`TaskMachine` per task it has in flight.
The machine does no I/O, reads no clock and knows nothing of trio: the actor feeds it what
happened (an answer arrived, the request became suspect, the re-send wait ran out, the task
timed out) and does what the returned decision says (report to the job, publish again).
Times it needs are passed in.

The reports (:class:`TaskWaiting`, :class:`TaskSent`, :class:`TaskProgress`,
:class:`TaskSettled`) are the only
messages a device actor sends to a job actor's mailbox. They live here, beside the machine
that decides them, so that :mod:`pm.jobs` and :mod:`pm.devices` both import them and never
each other.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .config import RecoveryConfig
from .protocol import PROGRESS_CODE, SanjiAnswer, answer_progress, error_result, is_success
from .schemas import TaskStatus, WaitingReason

# -- reports from device actors to job actors -----------------------------------------------


class TaskWaiting(msgspec.Struct, frozen=True, tag=True):
    """The task's turn came but it cannot be sent yet, for ``reason``."""

    task_id: int
    reason: WaitingReason


class TaskSent(msgspec.Struct, frozen=True, tag=True):
    """The task's request left for its device."""

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
TaskReport = TaskWaiting | TaskSent | TaskProgress | TaskSettled | TaskHeldBack


# -- the re-send schedule -------------------------------------------------------------------


class ResendSchedule(msgspec.Struct, frozen=True):
    """When requests that may have been lost are re-sent (the ``[recovery]`` keys, whose
    defaults live in :class:`pm.config.RecoveryConfig` only).

    ``devices_return_grace``: seconds after a broker reconnect or a gateway restart during
    which devices are assumed to be reconnecting (their own backoff), so requests published
    then are suspect. A suspect request is sent again ``first_delay`` seconds without an
    answer later, then at doubling intervals up to ``max_delay``.
    """

    devices_return_grace: float
    first_delay: float
    max_delay: float

    @classmethod
    def from_config(cls, recovery: RecoveryConfig) -> ResendSchedule:
        return cls(
            devices_return_grace=recovery.devices_return_grace,
            first_delay=recovery.resend_first_delay,
            max_delay=recovery.resend_max_delay,
        )


DEFAULT_RESEND = ResendSchedule.from_config(RecoveryConfig())


# -- the machine ----------------------------------------------------------------------------


class TaskMachine:
    """What one in-flight task does with each event; no I/O, no clock, no trio.

    Args:
      task_id: the task the reports are about.
      request_id: the id the device's answers must carry (default: ``task_id``; a retry
        goes out with an id of its own, see :attr:`pm.state.TaskRecord.request_id`).
      schedule: the re-send schedule.
      suspect: the request may be lost (sent before a restart, or published while devices
        are still returning): it goes out retained and is re-sent until answered. See
        :meth:`is_suspect` for the rule.

    ``resend_delay`` is how long the actor waits for an answer before re-sending a suspect
    request; every message from the device restarts that wait, each re-send doubles it up
    to ``schedule.max_delay``.
    """

    __slots__ = ("request_id", "resend_delay", "schedule", "suspect", "task_id")

    def __init__(
        self,
        task_id: int,
        schedule: ResendSchedule,
        *,
        suspect: bool,
        request_id: int | None = None,
    ) -> None:
        self.task_id = task_id
        # The id the request went out with: the task id, or a retry's own id.
        self.request_id = task_id if request_id is None else request_id
        self.schedule = schedule
        self.suspect = suspect
        self.resend_delay = schedule.first_delay

    @staticmethod
    def is_suspect(*, already_sent: bool, now: float, devices_return_until: float) -> bool:
        """A request is suspect when its task was already sent before (a job resumed after a
        restart) or when it is published before ``devices_return_until`` (devices may not
        have resubscribed yet). ``now`` and the limit are on the same clock."""
        return already_sent or now < devices_return_until

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
            return TaskSettled(self.task_id, "resolved", answer.data)
        return TaskSettled(self.task_id, "error", error_result(answer))

    def on_suspect(self) -> bool:
        """The request was re-published retained (after a reconnect). Returns whether it just
        became suspect, i.e. whether the actor must start waiting to re-send it."""
        if self.suspect:
            return False
        self.suspect = True
        return True

    def on_resend_due(self) -> float:
        """``resend_delay`` passed without an answer: the actor re-sends the request now.
        Returns the wait that ran out (for the log); the next wait is twice as long, up to
        ``schedule.max_delay``."""
        waited = self.resend_delay
        self.resend_delay = min(waited * 2, self.schedule.max_delay)
        return waited

    def on_timeout(self) -> TaskSettled:
        """The task's own timeout passed without a final answer."""
        return TaskSettled(self.task_id, "timeout", None)
