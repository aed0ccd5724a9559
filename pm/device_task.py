"""One task on one device: publish its request, feed its answers to its machine, time it out.

A mixin of :class:`pm.devices.Fleet` (the fleet's per-task I/O, apart from its registry and
routing): the device actor calls :meth:`DeviceTaskRunner._run_task` for each task whose turn
has come. What to do with each answer is the pure :class:`~pm.task_machine.TaskMachine`'s;
this is the adapter doing the I/O and the waiting around it.

Error handling: a job actor that is gone (:class:`~actors.ActorStopped`) ends the task's run
quietly (nobody waits for it any more); anything else raises into the device actor, whose
failure policy is :meth:`pm.devices.Fleet.on_device_failure`. The request is always removed
from the in-flight table on the way out, whatever ended the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from actors import ActorRef, ActorStopped

from .answer_inbox import AnswerInbox
from .device_turns import FleetBudget, take_budget_slot
from .device_waits import DeviceWaits
from .in_flight import InFlight, InFlightRequests
from .job_contract import SendGate
from .protocol import SanjiAnswer
from .state import TaskRecord
from .task_machine import TaskReport, TaskResent, TaskSent, TaskSettled

# The fleet's logger: these lines are about device actors, filtered by that name.
logger = logging.getLogger("pm.devices")


class Dispatch(msgspec.Struct, frozen=True, tag=True):
    """Run ``task`` on this device when its turn comes (unless its job's ``gate`` is held);
    tell ``reports`` (its job's mailbox) what became of it. The actor never writes ``task``."""

    task: TaskRecord
    reports: ActorRef[TaskReport]
    gate: SendGate | None = None
    high_priority: bool = False


class DeviceTaskRunner:
    """The per-task part of :class:`pm.devices.Fleet` (which sets these attributes)."""

    _requests: InFlightRequests
    _waits: DeviceWaits
    _wall_clock: Callable[[], float]
    _stopping: bool
    _nothing_in_flight: trio.Event
    budget: FleetBudget
    published: int
    answered: int

    async def _run_task(
        self,
        device: str,
        dispatch: Dispatch,
        answers: AnswerInbox[SanjiAnswer | None],
    ) -> None:
        """Publish one task's request and feed its machine until it settles or is
        abandoned: the I/O around :class:`~pm.task_machine.TaskMachine`."""
        task, reports = dispatch.task, dispatch.reports
        if task.final:
            return  # its job ended while it was queued: it never reaches the device
        if self._stopping:
            await trio.sleep_forever()  # shutdown: it stays unsent, resumed at the next start
        # Sent before a restart: held at once, whatever its device's presence, so that its
        # timeout runs and an answer to the copy sent then is taken.
        resumed = task.status == "sent"
        try:
            if (
                not resumed
                and not self._waits.sendable_now(device, task, dispatch.gate)
                and not await self._waits.wait_until_sendable(device, task, reports, dispatch.gate)
            ):
                return
        except ActorStopped:
            return  # the job actor is gone: nobody is waiting for this task any more
        if self._stopping:
            await trio.sleep_forever()
        budgeted = self.budget.limit is not None  # else no coroutine per task (default path)
        if budgeted and not await take_budget_slot(self.budget, dispatch, lambda: self._stopping):
            return
        if resumed:
            # Sent before a restart: its timeout still counts from that send. It is held, not
            # published: the first sign of its device sends one more copy (pm.in_flight).
            in_flight = self._requests.hold(device, task, answers, self._wall_clock())
        else:
            in_flight, published = self._requests.publish(device, task, answers)
            self.published += 1
            # The per-task hot path: DEBUG only, and no extra dict built unless enabled.
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "task %d of job %d sent to device %s",
                    task.id,
                    task.job_id,
                    device,
                    extra=_ids(task, device),
                )
        settled = False
        try:
            # The task timeout (the scope's deadline) counts from the first send.
            with in_flight.scope:
                if not resumed:
                    await reports.tell(TaskSent(task.id, published))
                report = await self._await_final_answer(device, task, reports, in_flight, answers)
                settled = True
                self.answered += 1
                await reports.tell(report)
                return
            if in_flight.abandoned:
                logger.info(
                    "task %d of job %d on device %s: abandoned, its job ended %s",
                    task.id,
                    task.job_id,
                    device,
                    task.status,
                    extra=_ids(task, device, status=task.status, abandoned=True),
                )
            else:
                logger.info(
                    "task %d of job %d on device %s: timeout after %g s without a final answer",
                    task.id,
                    task.job_id,
                    device,
                    task.timeout,
                    extra=_ids(task, device, status="timeout", timeout=task.timeout),
                )
                await reports.tell(in_flight.machine.on_timeout())
        except ActorStopped:
            pass  # the job actor is gone: nobody is waiting for this task any more
        finally:
            if budgeted:
                self.budget.release()
            self._requests.remove(device, in_flight, settled=settled)
            self._requests.drop_stale_answers(in_flight, settled=settled)
            if self._stopping and not len(self._requests):
                self._nothing_in_flight.set()

    async def _await_final_answer(
        self,
        device: str,
        task: TaskRecord,
        reports: ActorRef[TaskReport],
        in_flight: InFlight,
        answers: AnswerInbox[SanjiAnswer | None],
    ) -> TaskSettled:
        """Wait for the answer that settles the task, reporting progress on the way and
        publishing one more copy whenever :mod:`pm.in_flight` marks the request due."""
        machine = in_flight.machine
        while True:
            if in_flight.resend_due and not self._stopping:
                await self._resend(device, task, reports, in_flight)
            # No timer of its own (the task scope bounds it): a cancel scope per answer wait
            # cost ~3% of the gateway's CPU.
            answer = await answers.get()
            if answer is None:
                continue  # a wake-up: a copy is due
            report = machine.on_answer(answer)
            if isinstance(report, TaskSettled):
                return report
            if report is not None:
                await reports.tell(report)

    async def _resend(
        self, device: str, task: TaskRecord, reports: ActorRef[TaskReport], in_flight: InFlight
    ) -> None:
        sent = self._requests.publish_again(in_flight)
        # DEBUG: a broker restart re-sends to every device at once (the engine logs the count).
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "task %d of job %d on device %s: %s",
                task.id,
                task.job_id,
                device,
                "re-sent, same id" if sent else "re-send deferred (broker disconnected)",
                extra=_ids(task, device, resent=sent),
            )
        if sent:
            await reports.tell(TaskResent(task.id))


def _ids(task: TaskRecord, device: str, **fields: Any) -> dict[str, Any]:
    """``extra=`` fields of a log line about one task (see :mod:`pm.logs`)."""
    return {"job_id": task.job_id, "task_id": task.id, "device": device, **fields}
