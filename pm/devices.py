"""Device actors: one per device id, one command in flight, FIFO across jobs.

A :class:`Fleet` owns a registry of device actors (spawned on the first task for a device,
retired after ``tasks.device_idle_retire`` idle seconds) and routes incoming answers to the
actor whose task is in flight. Everything that arrives and fits no in-flight task is dropped
and counted by reason in :attr:`Fleet.dropped`; nothing a device sends can raise here.

Restart policy: a device actor that raises is stopped (not restarted); its in-flight task
and every task still queued for it end ``error`` with a result naming the failure. Other
devices and jobs are untouched; the next task for that device spawns a fresh actor.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import trio

from actors import ActorStopped, Directive, Failure, IdleInbox, Registry, Supervisor

from .json_nesting import DEFAULT_MAX_JSON_DEPTH
from .protocol import (
    PROGRESS_CODE,
    MalformedAnswer,
    SanjiAnswer,
    SanjiRequest,
    TopicTemplates,
    answer_progress,
    decode_answer,
    encode_request,
    error_result,
    is_success,
)
from .state import TaskRecord

if TYPE_CHECKING:
    from .jobs import Job

logger = logging.getLogger(__name__)

# Answers buffered for the one in-flight task; a device flooding beyond this is dropped.
ANSWER_BUFFER = 16


class ResendSchedule(msgspec.Struct, frozen=True):
    """When requests that may have been lost are re-sent (``[recovery]`` keys).

    ``devices_return_grace``: seconds after a broker reconnect or a gateway restart during
    which devices are assumed to be reconnecting (their own backoff), so requests published
    then are suspect. A suspect request is sent again ``first_delay`` seconds without an
    answer later, then at doubling intervals up to ``max_delay``.
    """

    devices_return_grace: float = 15.0
    first_delay: float = 1.0
    max_delay: float = 30.0


DEFAULT_RESEND = ResendSchedule()


class Publisher(Protocol):
    """What the fleet needs of the MQTT client."""

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False
    ) -> bool: ...


class Dispatch(msgspec.Struct, frozen=True, tag=True):
    """Run ``task`` (of ``job``) on this device when its turn comes."""

    task: TaskRecord
    job: Job


class InFlight:
    """The one task a device is working on, as the answer router sees it.

    ``retained`` is set once its request was (re)published with the retain flag, so that a
    device subscribing late still gets it; the retained copy is cleared when the task ends.
    """

    __slots__ = ("answers", "payload", "retained", "task_id", "topic")

    def __init__(
        self,
        task_id: int,
        topic: str,
        payload: bytes,
        answers: trio.MemorySendChannel[SanjiAnswer | None],
        retained: bool,
    ) -> None:
        self.task_id = task_id
        self.topic = topic
        self.payload = payload
        self.answers = answers
        self.retained = retained


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

    async def dispatch(self, task: TaskRecord, job: Job) -> None:
        """Queue ``task`` on its device; waits while that device's mailbox is full."""
        await self._registry.tell(task.device, Dispatch(task, job))

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
        if in_flight is None or in_flight.task_id != answer.id:
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
                logger.debug(
                    "task %d on device %s: re-sent after reconnect",
                    in_flight.task_id,
                    device,
                    extra={"task_id": in_flight.task_id, "device": device},
                )
            if not in_flight.retained:
                in_flight.retained = True
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
        task, job = dispatch.task, dispatch.job
        if job.final or task.final:
            return  # its job ended while it was queued: it never reaches the device
        # A resumed job's task may already be "sent": it goes out again with the same id.
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
        # A task already "sent" belongs to a job resumed after a restart, and any request
        # published soon after a restart or reconnect may reach a broker its device has not
        # resubscribed to yet: such requests are "suspect", published retained and re-sent
        # until answered (see republish_in_flight).
        resend = task.status == "sent" or trio.current_time() < self._devices_return_until
        in_flight = InFlight(task.id, topic, payload, answers_send, retained=resend)
        self._in_flight[device] = in_flight
        # The task timeout counts from publication; the job cancels this scope to abandon.
        timer = job.open_task_scope(task.id, trio.current_time() + task.timeout)
        try:
            # If the connection is down, publish returns False and the request goes out
            # with the other in-flight ones when it is back (republish_in_flight).
            self._publisher.publish(topic, payload, retain=resend)
            self.published += 1
            # The per-task hot path: DEBUG only, and no extra dict built unless enabled.
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "task %d of job %d sent to device %s%s",
                    task.id,
                    job.id,
                    device,
                    " (retained, re-sent until answered)" if resend else "",
                    extra=_ids(task, device, retained=resend),
                )
            with timer:
                await job.report_sent(task)
                resend_delay = self._resend.first_delay
                while True:
                    # A request that may have been lost (re-sent after a reconnect or a
                    # restart) is sent again until answered, at growing intervals: a broker
                    # can lose the re-send too (amqtt races a retained publish against a
                    # concurrent subscribe), and devices replay answers to repeated ids.
                    if not in_flight.retained:
                        # The common case needs no timer of its own (the task scope bounds
                        # it): a cancel scope per answer wait cost ~3% of the gateway's CPU.
                        answer = await answers.receive()
                    else:
                        with trio.move_on_after(resend_delay) as waiting:
                            answer = await answers.receive()
                        if waiting.cancelled_caught:
                            sent = self._publisher.publish(topic, payload, retain=True)
                            if sent:
                                self.republished += 1
                            # Only suspect requests get here (after a reconnect or a restart).
                            logger.info(
                                "task %d of job %d on device %s: no answer after %g s, %s",
                                task.id,
                                job.id,
                                device,
                                resend_delay,
                                "re-sent" if sent else "re-send deferred (broker disconnected)",
                                extra=_ids(task, device, resend_delay=resend_delay, resent=sent),
                            )
                            resend_delay = min(resend_delay * 2, self._resend.max_delay)
                            continue
                    if answer is None or answer.id != task.id:
                        continue  # None: a nudge to re-evaluate (the request became suspect)
                    if answer.code == PROGRESS_CODE:
                        progress = answer_progress(answer)
                        if progress is not None:
                            await job.report_progress(task, progress)
                        continue
                    self.answered += 1
                    if is_success(answer.code):
                        await job.report_settled(task, "resolved", answer.data)
                    else:
                        await job.report_settled(task, "error", error_result(answer))
                    return
            if timer.cancelled_caught and not job.final:
                logger.info(
                    "task %d of job %d on device %s: timeout after %g s without a final answer",
                    task.id,
                    job.id,
                    device,
                    task.timeout,
                    extra=_ids(task, device, status="timeout", timeout=task.timeout),
                )
                await job.report_settled(task, "timeout", None)
            elif timer.cancelled_caught:
                logger.info(
                    "task %d of job %d on device %s: abandoned, its job ended %s",
                    task.id,
                    job.id,
                    device,
                    job.record.status,
                    extra=_ids(task, device, status=job.record.status, abandoned=True),
                )
        except ActorStopped:
            pass  # the job actor is gone: nobody is waiting for this task any more
        finally:
            del self._in_flight[device]
            job.close_task_scope(task.id)
            if in_flight.retained:
                # Clear the retained copy so no later subscriber gets a settled request.
                self._publisher.publish(topic, b"", retain=True)

    # -- supervision ---------------------------------------------------------------------

    def on_device_failure(self, failure: Failure[Any]) -> Directive:
        """Policy for device actors: stop the actor and fail its tasks, in flight and queued."""
        device = failure.name.partition(":")[2]
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
            if not dispatch.job.final:  # an ended job's tasks keep the status it gave them
                logger.warning(
                    "task %d of job %d on device %s: error, the device actor failed",
                    task.id,
                    task.job_id,
                    device,
                    extra=_ids(task, device, status="error", error=repr(failure.error)),
                )
            dispatch.job.report_settled_soon(task, "error", reason)
        return Directive.STOP


def _ids(task: TaskRecord, device: str, **fields: Any) -> dict[str, Any]:
    """``extra=`` fields of a log line about one task (see :mod:`pm.logs`)."""
    return {"job_id": task.job_id, "task_id": task.id, "device": device, **fields}
