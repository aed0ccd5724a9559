"""The one request each device has in flight, as answer routing and re-sends see it.

:class:`InFlightRequests` is shared by a fleet's device actors (:mod:`pm.devices`): an actor
registers its task's request when it publishes it and removes it when the task is over;
meanwhile answers from the device are routed to the actor, and a job that ends early
abandons it. Every method runs on the trio thread and never waits.

Re-sends are driven by presence, never by a timer. A request in flight is marked due for one
more copy (same task id; the device actor publishes it) when:

- its device comes back: online after offline, or first online after the request left while
  its presence was unknown (the copy may have gone to a broker it was not subscribed to);
- the gateway's own broker connection, or its answer subscription, comes back while the
  device is not offline: one copy at once (the copy or its answer may have been lost on the
  way), and for a device known online one more when it next announces itself (the broker may
  have restarted, and the device resubscribes only after the gateway is back: its birth, or
  the embedded broker's announcement, says when a copy can reach it);
- after a gateway restart, the request was in flight before it (:meth:`InFlightRequests.hold`)
  and its device is seen for the first time since: an ``online`` statement (a birth, the
  embedded broker's announcement, a retained one replayed at subscribe) or any message on its
  answer topic. A device never seen again is sent nothing; its task times out.

The first two are ``tasks.resend_on_reconnect``; the third ``recovery.resend_inflight``.

Error handling: nothing a device sends raises here; what fits no request in flight is
dropped and counted by reason in :attr:`InFlightRequests.dropped` (``duplicate_answer``: a
second final answer to the task the device settled last, e.g. to both copies of a re-sent
request).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import trio

from .answer_inbox import AnswerInbox
from .answer_latency import AnswerLatencies
from .presence import Presence
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
from .task_machine import TaskMachine

logger = logging.getLogger(__name__)


class Publisher(Protocol):
    """What the fleet needs of the MQTT client."""

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False
    ) -> bool: ...


class InFlight:
    """One device's request in flight: its task's state machine, the device actor's answer
    inbox, and the actor's own cancel scope for the task (its deadline is the task
    timeout; only :meth:`InFlightRequests.abandon` cancels it, setting ``abandoned`` first).

    ``resend_due``: one more copy is to go out (the actor publishes it when it wakes, woken
    by a ``None`` on ``answers``). ``awaiting_sighting``: the next sign of its device (an
    ``online`` statement or a message from it) makes it due: set for a request sent before a
    restart, and after a reconnect for a device known online.
    """

    __slots__ = (
        "abandoned",
        "answered",
        "answers",
        "awaiting_sighting",
        "job_id",
        "machine",
        "payload",
        "resend_due",
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
        answers: AnswerInbox[SanjiAnswer | None],
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
        # Trio time this gateway process registered it (its first publication, or its hold
        # after a restart), and whether a final answer came (its latency is recorded once,
        # whatever repeats of it arrive).
        self.sent_at = sent_at
        self.answered = False
        self.resend_due = False
        self.awaiting_sighting = False

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
      resend_on_reconnect: ``tasks.resend_on_reconnect`` (see the module docstring).
    """

    def __init__(
        self,
        publisher: Publisher,
        topics: TopicTemplates,
        *,
        max_answer_bytes: int,
        max_answer_depth: int,
        resend_on_reconnect: bool,
    ) -> None:
        self._publisher = publisher
        self._topics = topics
        self._max_answer_bytes = max_answer_bytes
        self._max_answer_depth = max_answer_depth
        self._resend_on_reconnect = resend_on_reconnect
        self._by_device: dict[str, InFlight] = {}
        # Devices seen (online, or a message from them) since start: a request held after a
        # restart goes out at once if its device was seen before its turn came.
        self._seen: set[str] = set()
        # The task each device settled last: a second answer to it is a duplicate.
        self._last_settled: dict[str, int] = {}
        self.dropped: Counter[str] = Counter()
        # Copies published again (re-sends), all devices together.
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
        answers: AnswerInbox[SanjiAnswer | None],
    ) -> tuple[InFlight, bool]:
        """Publish ``task``'s request to ``device`` and register it until its timeout from now.
        Returns it and whether the MQTT client took the copy (if its connection is down, the
        copy goes out when it is back: :meth:`connection_back`)."""
        now = trio.current_time()
        in_flight = self._register(device, task, answers, now + task.timeout, now)
        return in_flight, self._publisher.publish(in_flight.topic, in_flight.payload)

    def hold(
        self,
        device: str,
        task: TaskRecord,
        answers: AnswerInbox[SanjiAnswer | None],
        wall_now: float,
    ) -> InFlight:
        """Register the request of a task sent before a restart without publishing it: its
        answer (to the copy sent then) settles it, and the first sign of its device makes one
        more copy due (at once if the device was already seen since start).

        Its timeout counts from its first send (``sent_at``; ``wall_now`` is the epoch time
        now): already past if it ran out while the gateway was down. A task stored before
        first sends were kept gets a whole timeout from now."""
        remaining = task.timeout
        if task.sent_at is not None:
            remaining = task.sent_at + task.timeout - wall_now
        now = trio.current_time()
        in_flight = self._register(device, task, answers, now + remaining, now)
        if device in self._seen:
            self._make_due(in_flight)
        else:
            in_flight.awaiting_sighting = True
        return in_flight

    def publish_again(self, in_flight: InFlight) -> bool:
        """Publish one more copy of a request that is due; returns whether the MQTT client
        took it (if not, a later reconnect makes it due again)."""
        in_flight.resend_due = False
        sent = self._publisher.publish(in_flight.topic, in_flight.payload)
        if sent:
            self.republished += 1
        return sent

    def remove(self, device: str, in_flight: InFlight, *, settled: bool) -> None:
        """The task is over: answers to it are dropped from now on (as duplicates if it was
        ``settled`` by an answer)."""
        del self._by_device[device]
        if settled:
            self._last_settled[device] = in_flight.machine.request_id

    def drop_stale_answers(self, in_flight: InFlight, *, settled: bool) -> None:
        """The task is over: answers that slipped into its actor's inbox before are stale.
        A final one is a second answer to a ``settled`` task (say, to the other copy of a
        re-send), or an answer to an abandoned one."""
        if not len(in_flight.answers):
            return  # the usual case
        request_id = in_flight.machine.request_id
        reason = "duplicate_answer" if settled else "unexpected_id"
        for answer in in_flight.answers.take_all():
            if answer is not None and answer.id == request_id and answer.code != PROGRESS_CODE:
                self.dropped[reason] += 1

    # -- called from outside the device actors ---------------------------------------------

    def route(self, topic: str, payload: bytes) -> None:
        """Hand one message from an answer topic to the actor whose request it answers."""
        device = self._topics.device_of_response(topic)
        if device is None:
            self.dropped["foreign_topic"] += 1
            return
        self.route_answer(device, payload)

    def route_answer(self, device: str, payload: bytes) -> None:
        """:meth:`route` for a message whose topic is the answer topic of ``device``."""
        self._seen.add(device)
        in_flight = self._by_device.get(device)
        answer: SanjiAnswer | None = None
        # Refused before decoding: parsing a huge payload would cost more than dropping it.
        if len(payload) > self._max_answer_bytes:
            self.dropped["oversized"] += 1
        else:
            try:
                answer = decode_answer(payload, self._max_answer_depth)
            except MalformedAnswer:
                self.dropped["malformed"] += 1
        if (
            answer is not None
            and in_flight is not None
            and in_flight.machine.request_id == answer.id
        ):
            if answer.code != PROGRESS_CODE and not in_flight.answered:
                in_flight.answered = True
                self.latencies.record(device, trio.current_time() - in_flight.sent_at)
            if not in_flight.answers.put_nowait(answer):
                self.dropped["answer_overflow"] += 1
            return
        if in_flight is not None and in_flight.awaiting_sighting:
            in_flight.awaiting_sighting = False
            self._make_due(in_flight)  # the device is there: it gets its request again
        if answer is None:
            return
        if self._last_settled.get(device) == answer.id:
            self.dropped["duplicate_answer"] += 1
        else:
            # Unknown id, another device's task, or a task abandoned.
            self.dropped["unexpected_id"] += 1

    def device_online(self, device: str, came_back: bool) -> None:
        """A source says ``device`` is online; ``came_back``: it was not before (see
        :attr:`pm.presence.PresenceBook.on_online`)."""
        self._seen.add(device)
        in_flight = self._by_device.get(device)
        if in_flight is None:
            return
        if in_flight.awaiting_sighting or (came_back and self._resend_on_reconnect):
            in_flight.awaiting_sighting = False
            self._make_due(in_flight)

    def connection_back(self, presence: Callable[[str], Presence]) -> int:
        """The gateway's broker connection (or its answer subscription) is back: every request
        in flight to a device not offline is due again now, and one to a device known online
        once more at its next sign (an offline one's is due when it comes back). Returns how
        many are due now."""
        if not self._resend_on_reconnect:
            return 0
        due = 0
        for device, in_flight in self._by_device.items():
            known = presence(device)
            if known is Presence.OFFLINE:
                continue
            if known is Presence.ONLINE:
                in_flight.awaiting_sighting = True
            self._make_due(in_flight)
            due += 1
        return due

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

    # -- helpers -----------------------------------------------------------------------------

    def _register(
        self,
        device: str,
        task: TaskRecord,
        answers: AnswerInbox[SanjiAnswer | None],
        deadline: float,
        now: float,
    ) -> InFlight:
        """Register the request of ``task`` to ``device`` until ``deadline``, sent or held
        at ``now`` (both trio time)."""
        request_id = task.request_id  # the task id; a retry's own id (pm.task_record)
        payload = encode_request(
            SanjiRequest(
                id=request_id,
                method=task.method,  # type: ignore[arg-type]
                resource=task.resource,
                data=task.data,
                tunnel=task.tunnel,
            )
        )
        topic = self._topics.request_topic(device)
        scope = trio.CancelScope(deadline=deadline)
        in_flight = InFlight(
            TaskMachine(task.id, request_id),
            task.job_id,
            topic,
            payload,
            answers,
            scope,
            now,
        )
        self._by_device[device] = in_flight
        return in_flight

    @staticmethod
    def _make_due(in_flight: InFlight) -> None:
        if in_flight.resend_due:
            return
        in_flight.resend_due = True
        # Wakes the actor; if its inbox is full, answers are queued: it wakes anyway and sees
        # the flag.
        in_flight.answers.put_nowait(None)
