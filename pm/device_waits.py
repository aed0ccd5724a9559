"""Why a device's tasks wait: another task goes first (busy), or the device is offline.

:class:`DeviceWaits` counts the tasks handed to each device and not done, which makes a newly
queued one ``device-busy``; and it parks the task whose turn came while its device is
offline until it is back. A device actor (:mod:`pm.devices`) asks
:meth:`DeviceWaits.wait_until_sendable` before it publishes a task. A device online or
unknown costs one presence lookup and no timer; an offline one parks the task (reported
``device-offline`` to its job) in a cancel scope whose deadline is the task's
``expires_at``, until the device turns online, the task expires (it is reported
``expired`` and never reaches the device), or its job ends (:meth:`DeviceWaits.abandon`).
The device's other tasks stay queued behind it in order.

Error handling: :class:`~actors.ActorStopped` from a report (the job actor is gone)
propagates to the device actor, which drops the task.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from actors import ActorRef

from .job_contract import SendGate
from .presence import Presence, PresenceBook
from .schemas import WaitingReason
from .state import TaskRecord
from .task_machine import TaskHeldBack, TaskReport, TaskWaiting, expired_unsent

logger = logging.getLogger(__name__)


class DeviceWaits:
    """Tasks queued per device, and the parked task of each offline device.

    Args:
      presence: which devices are online.
      wall_clock: epoch seconds, the clock of each task's ``expires_at``.
    """

    def __init__(self, presence: PresenceBook, wall_clock: Callable[[], float]) -> None:
        self.presence = presence
        self._wall_clock = wall_clock
        # Each parked task's job id and cancel scope, by device.
        self._parked: dict[str, tuple[int, trio.CancelScope]] = {}
        # Tasks handed to each device and not done yet (queued or current); only devices with
        # some are keys.
        self._queued: dict[str, int] = {}

    def offline(self, device: str) -> bool:
        return self.presence.presence(device) is Presence.OFFLINE

    def waiting_reason(self, device: str) -> WaitingReason | None:
        """Why a task queued for ``device`` now would wait behind another: ``device-busy``,
        or ``device-offline`` if the device is offline too; ``None`` if nothing is queued."""
        # A device with nothing queued costs no presence lookup here: its actor makes the one
        # lookup per task (and reports device-offline) when it takes the task.
        if device not in self._queued:
            return None
        return "device-offline" if self.offline(device) else "device-busy"

    def task_queued(self, device: str) -> None:
        self._queued[device] = self._queued.get(device, 0) + 1

    def task_done(self, device: str) -> None:
        left = self._queued.get(device, 0) - 1
        if left > 0:
            self._queued[device] = left
        else:
            self._queued.pop(device, None)

    def forget(self, device: str) -> None:
        """The device's actor failed: what was handed to it is failed with it."""
        self._queued.pop(device, None)

    def parked_job(self, device: str) -> int | None:
        """The job of the task parked on ``device``, if one is."""
        parked = self._parked.get(device)
        return None if parked is None else parked[0]

    def abandon(self, job_id: int) -> int:
        """The job ended: its parked tasks stop waiting. Returns how many there were."""
        parked = 0
        for parked_job, scope in self._parked.values():
            if parked_job == job_id:
                scope.cancel()
                parked += 1
        return parked

    def sendable_now(self, device: str, task: TaskRecord, gate: SendGate | None) -> bool:
        """Whether :meth:`wait_until_sendable` would return True at once, without waiting or
        telling anything: the per-task path, which then needs no coroutine."""
        if self.offline(device):
            return False
        expires_at = _unsent_expiry(task)
        if expires_at is not None and self._wall_clock() >= expires_at:
            return False
        return gate is None or not gate.held

    async def wait_until_sendable(
        self,
        device: str,
        task: TaskRecord,
        reports: ActorRef[TaskReport],
        gate: SendGate | None = None,
    ) -> bool:
        """Wait while ``device`` is offline; returns whether ``task`` (pending: one sent
        before a restart is never parked, see :mod:`pm.devices`) is to be sent now. It is
        not if its job ended meanwhile, or if its ``expires_at`` came first: then it is
        reported ``expired``, and never reaches the device; nor if its job's ``gate`` is
        held (paused, stopping): then it goes back to its job (``TaskHeldBack``)."""
        expires_at = _unsent_expiry(task)
        if self.offline(device):
            reason: WaitingReason = "device-offline"
            if task.waiting != reason:
                await reports.tell(TaskWaiting(task.id, reason))
            with trio.CancelScope(deadline=self._trio_deadline(expires_at)) as parked:
                self._parked[device] = (task.job_id, parked)
                try:
                    await self.presence.wait_sendable(device)
                finally:
                    del self._parked[device]
            if task.final:
                return False  # its job ended while it waited
            expired = parked.cancelled_caught
        else:
            expired = expires_at is not None and self._wall_clock() >= expires_at
        if expired:
            logger.info(
                "task %d of job %d on device %s: expired unsent (%s)",
                task.id,
                task.job_id,
                device,
                task.waiting,
                extra={
                    "job_id": task.job_id,
                    "task_id": task.id,
                    "device": device,
                    "status": "expired",
                    "waiting": task.waiting,
                },
            )
            await reports.tell(expired_unsent(task.id, task.waiting))
            return False
        # A task sent before a restart is in flight: it goes out again whatever holds its job.
        if gate is not None and gate.held and task.status == "pending":
            await reports.tell(TaskHeldBack(task.id))
            return False
        return True

    def _trio_deadline(self, epoch_seconds: float | None) -> float:
        """A wall-clock instant as a deadline on trio's clock."""
        if epoch_seconds is None:
            return math.inf
        return trio.current_time() + (epoch_seconds - self._wall_clock())


def _unsent_expiry(task: TaskRecord) -> float | None:
    """When ``task`` expires unsent: a retry waiting for its device was sent before, so it
    never "expired before it could be sent"."""
    return None if task.attempts else task.expires_at
