"""Device actors: one per device id, one command in flight, FIFO across jobs.

A :class:`Fleet` owns a registry of device actors (spawned on the first task for a device,
retired after ``tasks.device_idle_retire`` idle seconds) and routes incoming answers to the
actor whose task is in flight. Everything that arrives and fits no in-flight task is dropped
and counted by reason in :attr:`Fleet.dropped`; nothing a device sends can raise here.

The contract with jobs is narrow: a device actor receives a :class:`Dispatch` (the task and
a reference to its job's mailbox), reports with :mod:`pm.task_machine`'s messages only, and
owns the cancel scope of its task; a job that ends early calls :meth:`Fleet.abandon`, which
cancels the scopes of that job's tasks from here. What to do with each answer and when to
re-send is decided by the pure :class:`~pm.task_machine.TaskMachine`; this module does the
I/O around it.

Restart policy: a device actor that raises is stopped (not restarted); its in-flight task
and every task still queued for it end ``error`` with a result naming the failure. Other
devices and jobs are untouched; the next task for that device spawns a fresh actor.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any, Protocol

import msgspec
import trio

from actors import ActorRef, ActorStopped, Directive, Failure, IdleInbox, Registry, Supervisor

from .json_nesting import DEFAULT_MAX_JSON_DEPTH
from .protocol import (
    MalformedAnswer,
    SanjiAnswer,
    SanjiRequest,
    TopicTemplates,
    decode_answer,
    encode_request,
)
from .state import TaskRecord
from .task_machine import (
    DEFAULT_RESEND,
    ResendSchedule,
    TaskMachine,
    TaskReport,
    TaskSent,
    TaskSettled,
)

logger = logging.getLogger(__name__)

# Answers buffered for the one in-flight task; a device flooding beyond this is dropped.
ANSWER_BUFFER = 16


class Publisher(Protocol):
    """What the fleet needs of the MQTT client."""

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False
    ) -> bool: ...


class Dispatch(msgspec.Struct, frozen=True, tag=True):
    """Run ``task`` on this device when its turn comes; tell ``reports`` (the mailbox of the
    task's job) what became of it. The device actor reads ``task``, never writes it."""

    task: TaskRecord
    reports: ActorRef[TaskReport]


class InFlight:
    """The one task a device is working on: its state machine, and what the answer router
    and :meth:`Fleet.abandon` need to reach the device actor.

    ``scope`` is the device actor's own cancel scope for the task (its deadline is the task
    timeout); only code in this module cancels it, and sets ``abandoned`` first.
    """

    __slots__ = ("abandoned", "answers", "job_id", "machine", "payload", "scope", "topic")

    def __init__(
        self,
        machine: TaskMachine,
        job_id: int,
        topic: str,
        payload: bytes,
        answers: trio.MemorySendChannel[SanjiAnswer | None],
        scope: trio.CancelScope,
    ) -> None:
        self.machine = machine
        self.job_id = job_id
        self.topic = topic
        self.payload = payload
        self.answers = answers
        self.scope = scope
        self.abandoned = False

    @property
    def task_id(self) -> int:
        return self.machine.task_id


class Fleet:
    """Device actors and answer routing.

    Args:
      nursery: where device actors run (under this fleet's own supervisor).
      publisher: the MQTT client (or anything with its ``publish``).
      topics: request and answer topic templates.
      mailbox_size: tasks queued per device before senders wait.
      idle_timeout: seconds before an idle device actor retires.
      max_answer_bytes: larger messages on answer topics are dropped unread ("oversized").
      max_answer_depth: answers nested deeper are dropped unparsed ("malformed").
      resend: when suspect requests are re-sent.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        publisher: Publisher,
        topics: TopicTemplates,
        *,
        mailbox_size: int,
        idle_timeout: float,
        max_answer_bytes: int = 256 * 1024,
        max_answer_depth: int = DEFAULT_MAX_JSON_DEPTH,
        resend: ResendSchedule = DEFAULT_RESEND,
    ) -> None:
        self._nursery = nursery
        self._publisher = publisher
        self._resend = resend
        self._max_answer_bytes = max_answer_bytes
        self._max_answer_depth = max_answer_depth
        self._topics = topics
        self._registry: Registry[str, Dispatch] = Registry(
            Supervisor(nursery, self.on_device_failure),
            self._run_device,
            capacity=mailbox_size,
            idle_timeout=idle_timeout,
            name="device",
        )
        self._in_flight: dict[str, InFlight] = {}
        self._current: dict[str, Dispatch] = {}
        self._devices_return_until = -math.inf
        self.dropped: Counter[str] = Counter()
        self.published = 0
        self.answered = 0
        self.republished = 0

    @property
    def live_actors(self) -> int:
        return len(self._registry)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def dispatch(self, task: TaskRecord, reports: ActorRef[TaskReport]) -> None:
        """Queue ``task`` on its device; waits while that device's mailbox is full. What
        becomes of it is told to ``reports``; a task that is final by the time its turn
        comes (its job ended) never reaches the device."""
        await self._registry.tell(task.device, Dispatch(task, reports))

    def abandon(self, job_id: int) -> int:
        """The job ended early: its tasks in flight stop waiting for answers (their devices
        move on; a late answer is dropped as unexpected). Returns how many were in flight.

        Walks every in-flight task: called once per job that ends by timeout or cancel,
        never per task."""
        abandoned = 0
        for in_flight in self._in_flight.values():
            if in_flight.job_id == job_id and not in_flight.abandoned:
                in_flight.abandoned = True
                in_flight.scope.cancel()
                abandoned += 1
        return abandoned

    # -- answers, called by the MQTT client on the trio thread ---------------------------

    def on_answer(self, topic: str, payload: bytes) -> None:
        """Route one message from an answer topic. Never raises for what devices send."""
        device = self._topics.device_of_response(topic)
        if device is None:
            self.dropped["foreign_topic"] += 1
            return
        # Refused before decoding: parsing a huge payload would cost more than dropping it.
        if len(payload) > self._max_answer_bytes:
            self.dropped["oversized"] += 1
            return
        try:
            answer = decode_answer(payload, self._max_answer_depth)
        except MalformedAnswer:
            self.dropped["malformed"] += 1
            return
        in_flight = self._in_flight.get(device)
        if in_flight is None or in_flight.machine.task_id != answer.id:
            # Unknown id, another device's task, or a task already settled or abandoned.
            self.dropped["unexpected_id"] += 1
            return
        try:
            in_flight.answers.send_nowait(answer)
        except trio.WouldBlock:
            self.dropped["answer_overflow"] += 1

    def expect_devices_to_return(self) -> None:
        """Devices are reconnecting (the broker or the gateway restarted): for the schedule's
        grace, requests are published as suspect (retained, re-sent until answered)."""
        self._devices_return_until = max(
            self._devices_return_until,
            trio.current_time() + self._resend.devices_return_grace,
        )

    def republish_in_flight(self) -> None:
        """After a reconnect: send every in-flight request again, with the same task id.

        The broker may have lost them (a restarted embedded broker keeps no sessions), so
        delivery is at least once; a device replays its answer to a repeated id
        (docs/protocol.md). They go out *retained*:
        a device that reconnects and resubscribes after this moment still receives its
        request, from the broker, the moment it subscribes.
        """
        self.expect_devices_to_return()
        for device, in_flight in self._in_flight.items():
            if self._publisher.publish(in_flight.topic, in_flight.payload, retain=True):
                self.republished += 1
            # One line per device in flight: DEBUG (the engine logs the count at INFO).
            if logger.isEnabledFor(logging.DEBUG):
                task_id = in_flight.machine.task_id
                logger.debug(
                    "task %d on device %s: re-sent after reconnect",
                    task_id,
                    device,
                    extra={"task_id": task_id, "device": device},
                )
            if in_flight.machine.on_suspect():
                try:
                    in_flight.answers.send_nowait(None)  # the actor starts its re-send timer
                except trio.WouldBlock:
                    pass  # answers are queued: the actor wakes anyway

    # -- the actor -----------------------------------------------------------------------

    async def _run_device(self, device: str, inbox: IdleInbox[Dispatch]) -> None:
        answers_send, answers_receive = trio.open_memory_channel[SanjiAnswer | None](ANSWER_BUFFER)
        with answers_send, answers_receive:
            async for dispatch in inbox:
                # Kept on an exception: the failure policy fails this task explicitly.
                self._current[device] = dispatch
                try:
                    await self._run_task(device, dispatch, answers_send, answers_receive)
                except trio.Cancelled:
                    del self._current[device]
                    raise
                del self._current[device]

    async def _run_task(
        self,
        device: str,
        dispatch: Dispatch,
        answers_send: trio.MemorySendChannel[SanjiAnswer | None],
        answers: trio.MemoryReceiveChannel[SanjiAnswer | None],
    ) -> None:
        """Publish one task's request and feed its machine until it settles or is
        abandoned: the I/O around :class:`~pm.task_machine.TaskMachine`."""
        task, reports = dispatch.task, dispatch.reports
        if task.final:
            return  # its job ended while it was queued: it never reaches the device
        # Answers to an earlier task that slipped in just before it settled are stale now.
        while True:
            try:
                answers.receive_nowait()
            except trio.WouldBlock:
                break
        topic = self._topics.request_topic(device)
        payload = encode_request(
            SanjiRequest(
                id=task.id,
                method=task.method,  # type: ignore[arg-type]
                resource=task.resource,
                data=task.data,
                tunnel=task.tunnel,
            )
        )
        now = trio.current_time()
        # A resumed job's task may already be "sent": it goes out again with the same id.
        machine = TaskMachine(
            task.id,
            self._resend,
            suspect=TaskMachine.is_suspect(
                already_sent=task.status == "sent",
                now=now,
                devices_return_until=self._devices_return_until,
            ),
        )
        # The task timeout counts from publication; Fleet.abandon cancels it early.
        scope = trio.CancelScope(deadline=now + task.timeout)
        in_flight = InFlight(machine, task.job_id, topic, payload, answers_send, scope)
        self._in_flight[device] = in_flight
        try:
            # If the connection is down, publish returns False and the request goes out
            # with the other in-flight ones when it is back (republish_in_flight). A
            # suspect request goes out retained (see republish_in_flight).
            self._publisher.publish(topic, payload, retain=machine.suspect)
            self.published += 1
            # The per-task hot path: DEBUG only, and no extra dict built unless enabled.
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "task %d of job %d sent to device %s%s",
                    task.id,
                    task.job_id,
                    device,
                    " (retained, re-sent until answered)" if machine.suspect else "",
                    extra=_ids(task, device, retained=machine.suspect),
                )
            with scope:
                await reports.tell(TaskSent(task.id))
                report = await self._await_final_answer(device, task, reports, in_flight, answers)
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
                await reports.tell(machine.on_timeout())
        except ActorStopped:
            pass  # the job actor is gone: nobody is waiting for this task any more
        finally:
            del self._in_flight[device]
            if machine.suspect:
                # Clear the retained copy so no later subscriber gets a settled request.
                self._publisher.publish(topic, b"", retain=True)

    async def _await_final_answer(
        self,
        device: str,
        task: TaskRecord,
        reports: ActorRef[TaskReport],
        in_flight: InFlight,
        answers: trio.MemoryReceiveChannel[SanjiAnswer | None],
    ) -> TaskSettled:
        """Wait for the answer that settles the task, reporting progress on the way and
        re-sending a suspect request when its machine's wait runs out."""
        machine = in_flight.machine
        while True:
            if not machine.suspect:
                # The common case needs no timer of its own (the task scope bounds it): a
                # cancel scope per answer wait cost ~3% of the gateway's CPU.
                answer = await answers.receive()
            else:
                # A request that may have been lost is sent again until answered, at
                # growing intervals: a broker can lose the re-send too (amqtt races a
                # retained publish against a concurrent subscribe), and devices replay
                # answers to repeated ids.
                with trio.move_on_after(machine.resend_delay) as waiting:
                    answer = await answers.receive()
                if waiting.cancelled_caught:
                    self._resend_now(device, task, in_flight, machine.on_resend_due())
                    continue
            if answer is None:
                continue  # a nudge: the request became suspect, its re-send wait starts
            report = machine.on_answer(answer)
            if isinstance(report, TaskSettled):
                return report
            if report is not None:
                await reports.tell(report)

    def _resend_now(
        self, device: str, task: TaskRecord, in_flight: InFlight, waited: float
    ) -> None:
        sent = self._publisher.publish(in_flight.topic, in_flight.payload, retain=True)
        if sent:
            self.republished += 1
        # Only suspect requests get here (after a reconnect or a restart).
        logger.info(
            "task %d of job %d on device %s: no answer after %g s, %s",
            task.id,
            task.job_id,
            device,
            waited,
            "re-sent" if sent else "re-send deferred (broker disconnected)",
            extra=_ids(task, device, resend_delay=waited, resent=sent),
        )

    # -- supervision ---------------------------------------------------------------------

    def on_device_failure(self, failure: Failure[Any]) -> Directive:
        """Policy for device actors: stop the actor and fail its tasks, in flight and queued."""
        device: str = failure.key
        reason = {"error": f"device actor failed: {failure.error!r}"}
        doomed = [m for m in failure.drain() if isinstance(m, Dispatch)]
        current = self._current.pop(device, None)
        if current is not None:
            doomed.insert(0, current)
        # The supervisor logs the traceback; these lines say which tasks it cost.
        logger.error(
            "device actor %s failed (%r): its %d tasks end error",
            device,
            failure.error,
            len(doomed),
            extra={"device": device, "error": repr(failure.error), "failed_tasks": len(doomed)},
        )
        for dispatch in doomed:
            task = dispatch.task
            if task.final:
                continue  # its job ended: the task keeps the status the job gave it
            logger.warning(
                "task %d of job %d on device %s: error, the device actor failed",
                task.id,
                task.job_id,
                device,
                extra=_ids(task, device, status="error", error=repr(failure.error)),
            )
            # A policy is synchronous: the report goes out from a task of its own, which
            # waits if the job's mailbox is full (never lost) and gives up if the job ended.
            self._nursery.start_soon(
                _report_quietly, dispatch.reports, TaskSettled(task.id, "error", reason)
            )
        return Directive.STOP


async def _report_quietly(reports: ActorRef[TaskReport], report: TaskReport) -> None:
    try:
        await reports.tell(report)
    except ActorStopped:
        pass  # the job ended meanwhile; its final state already covers this task


def _ids(task: TaskRecord, device: str, **fields: Any) -> dict[str, Any]:
    """``extra=`` fields of a log line about one task (see :mod:`pm.logs`)."""
    return {"job_id": task.job_id, "task_id": task.id, "device": device, **fields}
