"""The one request each device has in flight, as answer routing and reconnects see it.

:class:`InFlightRequests` is shared by a fleet's device actors (:mod:`pm.devices`): an actor
registers its task's request when it publishes it and removes it when the task is over;
meanwhile answers from the device are routed to the actor, a reconnect re-sends the request,
and a job that ends early abandons it. Every method runs on the trio thread and never waits.

Error handling: nothing a device sends raises here; what fits no request in flight is
dropped and counted by reason in :attr:`InFlightRequests.dropped`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Protocol

import trio

from .answer_latency import AnswerLatencies
from .protocol import (
    PROGRESS_CODE,
    MalformedAnswer,
    SanjiAnswer,
    SanjiRequest,
    TopicTemplates,
    decode_answer,
    encode_request,
)
from .state import TaskRecord
from .task_machine import ResendSchedule, TaskMachine

logger = logging.getLogger(__name__)


class Publisher(Protocol):
    """What the fleet needs of the MQTT client."""

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False
    ) -> bool: ...


class InFlight:
    """One device's request in flight: its task's state machine, the device actor's answer
    channel, and the actor's own cancel scope for the task (its deadline is the task
    timeout; only :meth:`InFlightRequests.abandon` cancels it, setting ``abandoned`` first).
    """

    __slots__ = (
        "abandoned",
        "answered",
        "answers",
        "job_id",
        "machine",
        "payload",
        "scope",
        "sent_at",
        "topic",
    )

    def __init__(
        self,
        machine: TaskMachine,
        job_id: int,
        topic: str,
        payload: bytes,
        answers: trio.MemorySendChannel[SanjiAnswer | None],
        scope: trio.CancelScope,
        sent_at: float,
    ) -> None:
        self.machine = machine
        self.job_id = job_id
        self.topic = topic
        self.payload = payload
        self.answers = answers
        self.scope = scope
        self.abandoned = False
        # Trio time of the first publication, and whether a final answer came (its latency is
        # recorded once, whatever repeats of it arrive).
        self.sent_at = sent_at
        self.answered = False

    @property
    def task_id(self) -> int:
        return self.machine.task_id


class InFlightRequests:
    """Requests in flight by device.

    Args:
      publisher: the MQTT client (or anything with its ``publish``).
      topics: request and answer topic templates.
      max_answer_bytes: larger messages on answer topics are dropped unread ("oversized").
      max_answer_depth: answers nested deeper are dropped unparsed ("malformed").
      resend: when suspect requests are re-sent.
    """

    def __init__(
        self,
        publisher: Publisher,
        topics: TopicTemplates,
        *,
        max_answer_bytes: int,
        max_answer_depth: int,
        resend: ResendSchedule,
    ) -> None:
        self._publisher = publisher
        self._topics = topics
        self._max_answer_bytes = max_answer_bytes
        self._max_answer_depth = max_answer_depth
        self._resend = resend
        self._by_device: dict[str, InFlight] = {}
        self._devices_return_until = -math.inf
        self.dropped: Counter[str] = Counter()
        self.republished = 0
        # Each device's request-to-final-answer seconds, for GET /devices (latencyP50).
        self.latencies = AnswerLatencies()

    def __len__(self) -> int:
        return len(self._by_device)

    def get(self, device: str) -> InFlight | None:
        return self._by_device.get(device)

    # -- called by a device actor ----------------------------------------------------------

    def publish(
        self,
        device: str,
        task: TaskRecord,
        answers: trio.MemorySendChannel[SanjiAnswer | None],
        now: float,
    ) -> InFlight:
        """Publish ``task``'s request to ``device`` and register it; ``now`` is trio time.

        A task already "sent" belongs to a job resumed after a restart, and a request
        published soon after a restart or reconnect may reach a broker its device has not
        resubscribed to yet: such requests are suspect, published retained and re-sent until
        answered. If the connection is down, publish fails quietly and the request goes out
        with the others when it is back (:meth:`republish_all`).
        """
        topic = self._topics.request_topic(device)
        request_id = task.request_id
        payload = encode_request(
            SanjiRequest(
                id=request_id,
                method=task.method,  # type: ignore[arg-type]
                resource=task.resource,
                data=task.data,
                tunnel=task.tunnel,
            )
        )
        suspect = TaskMachine.is_suspect(
            already_sent=task.status == "sent",
            now=now,
            devices_return_until=self._devices_return_until,
        )
        machine = TaskMachine(task.id, self._resend, suspect=suspect, request_id=task.request_id)
        # The task timeout counts from publication.
        scope = trio.CancelScope(deadline=now + task.timeout)
        in_flight = InFlight(machine, task.job_id, topic, payload, answers, scope, now)
        self._by_device[device] = in_flight
        self._publisher.publish(topic, payload, retain=suspect)
        return in_flight

    def resend(self, in_flight: InFlight) -> bool:
        """Publish a suspect request again (retained); returns whether it went out."""
        sent = self._publisher.publish(in_flight.topic, in_flight.payload, retain=True)
        if sent:
            self.republished += 1
        return sent

    def remove(self, device: str, in_flight: InFlight) -> None:
        """The task is over: answers to it are dropped from now on."""
        del self._by_device[device]
        if in_flight.machine.suspect:
            # Clear the retained copy so no later subscriber gets a settled request.
            self._publisher.publish(in_flight.topic, b"", retain=True)

    # -- called from outside the device actors ---------------------------------------------

    def route(self, topic: str, payload: bytes) -> None:
        """Hand one message from an answer topic to the actor whose request it answers."""
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
        in_flight = self._by_device.get(device)
        if in_flight is None or in_flight.machine.request_id != answer.id:
            # Unknown id, another device's task, or a task already settled or abandoned.
            self.dropped["unexpected_id"] += 1
            return
        if answer.code != PROGRESS_CODE and not in_flight.answered:
            in_flight.answered = True
            self.latencies.record(device, trio.current_time() - in_flight.sent_at)
        try:
            in_flight.answers.send_nowait(answer)
        except trio.WouldBlock:
            self.dropped["answer_overflow"] += 1

    def expect_devices_to_return(self, now: float) -> None:
        """Devices are reconnecting: for the schedule's grace from ``now`` (trio time),
        requests are published as suspect."""
        self._devices_return_until = max(
            self._devices_return_until, now + self._resend.devices_return_grace
        )

    def republish_all(self, now: float) -> None:
        """After a reconnect: send every request in flight again, retained, with the same
        task id, and treat new ones as suspect for the grace (see
        :meth:`pm.devices.Fleet.republish_in_flight`)."""
        self.expect_devices_to_return(now)
        for device, in_flight in self._by_device.items():
            self.resend(in_flight)
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

    def abandon(self, job_id: int) -> int:
        """Cancel the device actors' scopes of ``job_id``'s requests; returns how many.

        Walks every request in flight: called once per job that ends by timeout or cancel,
        never per task."""
        abandoned = 0
        for in_flight in self._by_device.values():
            if in_flight.job_id == job_id and not in_flight.abandoned:
                in_flight.abandoned = True
                in_flight.scope.cancel()
                abandoned += 1
        return abandoned
