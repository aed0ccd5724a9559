"""Device actors: one per device id, one command in flight, FIFO across jobs.

A :class:`Fleet` owns a registry of device actors (spawned on the first task for a device,
retired after ``tasks.device_idle_retire`` idle seconds) and routes incoming answers to the
actor whose task is in flight (:mod:`pm.in_flight`). Everything that arrives and fits no
in-flight task is dropped and counted by reason in :attr:`Fleet.dropped`; nothing a device
sends can raise here.

The contract with jobs is narrow: a device actor receives a :class:`Dispatch` (the task and
a reference to its job's mailbox), reports with :mod:`pm.task_machine`'s messages only, and
owns the cancel scope of its task; a job that ends early calls :meth:`Fleet.abandon`, and
the device side cancels its own scopes of that job's tasks. What to do with each answer is
decided by the pure :class:`~pm.task_machine.TaskMachine`; the actor is the thin adapter
doing the I/O and the waiting around it (:mod:`pm.device_task`).

In-flight work across disconnects and restarts: a task stays ``sent`` while its device is
away, and its timeout keeps running from its first send. One more copy of the request (same
task id) goes out when its device comes back or the gateway's broker connection does, and
after a restart when its device is first seen: never on a timer (:mod:`pm.in_flight` has the
rule). The answer to any copy settles the task; a second one is dropped as a duplicate.

Queues that never wedge: a task is sent only when its device is online (or unknown, in the
:class:`~pm.presence.PresenceBook`) and has nothing in flight. When a task's turn comes and
its device is offline, the actor reports ``device-offline`` and parks until the device turns
online, the task's ``expiresAt`` passes (it ends ``expired`` unsent) or its job ends (a
:meth:`Fleet.abandon`); then it takes the next task (:mod:`pm.device_waits`). One presence lookup
per task: a task's wait costs a timer only while its device is offline.

Restart policy: a device actor that raises is stopped (not restarted); its in-flight task
and every task still queued for it end ``error`` with a result naming the failure. Other
devices and jobs are untouched; the next task for that device spawns a fresh actor.

Shutdown: after :meth:`Fleet.stop_publishing` no request leaves (a device actor whose next
task comes up parks until it is cancelled; no request is re-sent), while answers to the
requests in flight are still routed and reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import trio

from actors import ActorRef, Directive, Failure, IdleInbox, Registry, Supervisor

from .answer_inbox import AnswerInbox
from .device_failures import fail_device_tasks
from .device_task import DeviceTaskRunner
from .device_task import Dispatch as Dispatch
from .device_turns import DeviceTurns, FleetBudget, PriorityLanes
from .device_waits import DeviceWaits
from .in_flight import InFlightRequests, Publisher
from .job_contract import SendGate
from .json_nesting import DEFAULT_MAX_JSON_DEPTH
from .presence import PresenceBook
from .protocol import SanjiAnswer, TopicTemplates
from .schemas import WaitingReason
from .state import TaskRecord
from .task_machine import TaskReport

# Answers buffered for the one in-flight task; a device flooding beyond this is dropped.
ANSWER_BUFFER = 16


class Fleet(DeviceTaskRunner):
    """Device actors and answer routing (each task's I/O: :mod:`pm.device_task`).

    Args:
      nursery: where device actors run (under this fleet's own supervisor).
      publisher: the MQTT client (or anything with its ``publish``).
      topics: request and answer topic templates.
      mailbox_size: tasks queued per device before senders wait.
      idle_timeout: seconds before an idle device actor retires.
      max_answer_bytes: larger messages on answer topics are dropped unread ("oversized").
      max_answer_depth: answers nested deeper are dropped unparsed ("malformed").
      resend_on_reconnect: ``tasks.resend_on_reconnect``: a request in flight goes out once
        more when its device, or the broker connection, comes back.
      presence: which devices are online (the engine's; a fresh book by default, where every
        device is unknown, so sent at once).
      wall_clock: epoch seconds, the clock of each task's ``expires_at``.
      max_in_flight: requests in flight across the fleet, at most (``None``: no limit).
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
        resend_on_reconnect: bool = True,
        presence: PresenceBook | None = None,
        wall_clock: Callable[[], float] = time.time,
        max_in_flight: int | None = None,
    ) -> None:
        self._nursery = nursery
        self.presence = PresenceBook() if presence is None else presence
        self._wall_clock = wall_clock
        self._waits = DeviceWaits(self.presence, wall_clock)
        self._requests = InFlightRequests(
            publisher,
            topics,
            max_answer_bytes=max_answer_bytes,
            max_answer_depth=max_answer_depth,
            resend_on_reconnect=resend_on_reconnect,
        )
        self.presence.on_online = self._requests.device_online
        # on_answer() for a parsed topic (its device level); bound here: a call less per answer.
        self.on_device_answer = self._requests.route_answer
        self._lanes: PriorityLanes[Dispatch] = PriorityLanes()
        self.budget = FleetBudget(max_in_flight)
        self._registry: Registry[str, Dispatch | None] = Registry(
            Supervisor(nursery, self.on_device_failure),
            self._run_device,
            capacity=mailbox_size,
            idle_timeout=idle_timeout,
            name="device",
        )
        self._current: dict[str, Dispatch] = {}
        # Set by stop_publishing(): shutdown has begun, no request leaves any more.
        self._stopping = False
        self._nothing_in_flight = trio.Event()
        self.dropped = self._requests.dropped
        self.latencies = self._requests.latencies
        self.published = 0
        self.answered = 0

    @property
    def live_actors(self) -> int:
        return len(self._registry)

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    def task_in_flight(self, device: str) -> int | None:
        """The id of the task ``device`` is working on, if any."""
        in_flight = self._requests.get(device)
        return None if in_flight is None else in_flight.task_id

    @property
    def republished(self) -> int:
        return self._requests.republished

    async def dispatch(
        self,
        task: TaskRecord,
        reports: ActorRef[TaskReport],
        gate: SendGate | None = None,
        *,
        high_priority: bool = False,
    ) -> None:
        """Queue ``task`` on its device (waits while its mailbox is full); ``reports`` hears what
        became of it. Not sent if final by its turn, or if its ``gate`` is held then."""
        device = task.device
        self._waits.task_queued(device)
        try:
            if high_priority:
                await self._lanes.push(device, Dispatch(task, reports, gate, True), self._registry)
            else:
                await self._registry.tell(device, Dispatch(task, reports, gate))
        except BaseException:
            self._waits.task_done(device)
            raise

    def abandon(self, job_id: int) -> int:
        """The job ended early: its tasks in flight stop waiting for answers, and a task of it
        parked until its device is online stops waiting (their devices move on; a late answer
        is dropped as unexpected). Returns how many were in flight or parked."""
        return self._requests.abandon(job_id) + self._waits.abandon(job_id)

    def waiting_reason(self, device: str) -> WaitingReason | None:
        """Why a task queued for ``device`` now would wait behind another, if it would."""
        return self._waits.waiting_reason(device)

    def holds(self, task: TaskRecord) -> bool:
        """Whether ``task``'s turn has come on its device: its actor then decides whether it
        is sent or expires (see :mod:`pm.jobs`)."""
        current = self._current.get(task.device)
        return current is not None and current.task is task

    def parked(self, task: TaskRecord) -> bool:
        """Whether ``task``'s turn came and it waits, unsent, for its device to be online."""
        return self.holds(task) and self._waits.parked_job(task.device) == task.job_id

    def release_parked(self, job_id: int) -> int:
        """The job settled its parked tasks: they stop waiting for their devices, unsent."""
        return self._waits.abandon(job_id)

    def stop_publishing(self) -> None:
        """Shutdown begins: no request leaves from now on (no new task, no re-send); tasks
        not yet sent stay as they are stored and go out at the next start. Answers to the
        requests in flight are still taken (see :meth:`wait_nothing_in_flight`)."""
        self._stopping = True
        if not len(self._requests):
            self._nothing_in_flight.set()

    async def wait_nothing_in_flight(self) -> None:
        """After :meth:`stop_publishing`: returns once every request in flight has been
        answered, timed out or abandoned (and reported to its job)."""
        await self._nothing_in_flight.wait()

    # -- called by the MQTT client on the trio thread ------------------------------------

    def on_answer(self, topic: str, payload: bytes) -> None:
        """Route one message from an answer topic. Never raises for what devices send."""
        self._requests.route(topic, payload)

    def resend_after_reconnect(self) -> int:
        """The gateway's broker connection (or its answer subscription) is back: requests in
        flight to devices not offline go out once more, with the same task id (the copy, or
        its answer, may have been lost; a device answers a repeated id again without redoing
        the work, docs/protocol.md), and to a device known online once more when it next
        announces itself (:mod:`pm.in_flight`). Returns how many went out now."""
        if self._stopping:
            return 0
        return self._requests.connection_back(self.presence.presence)

    # -- the actor -----------------------------------------------------------------------

    async def _run_device(self, device: str, inbox: IdleInbox[Dispatch | None]) -> None:
        # One for the actor's life: each of its requests in flight in turn is answered here.
        answers: AnswerInbox[SanjiAnswer | None] = AnswerInbox(ANSWER_BUFFER)
        async for dispatch in DeviceTurns(device, inbox, self._lanes):
            # Kept on an exception: the failure policy fails this task explicitly.
            self._current[device] = dispatch
            try:
                await self._run_task(device, dispatch, answers)
            except trio.Cancelled:
                del self._current[device]
                raise
            del self._current[device]
            self._waits.task_done(device)

    # -- supervision ---------------------------------------------------------------------

    def on_device_failure(self, failure: Failure[Any]) -> Directive:
        """Policy for device actors: stop the actor and fail its tasks, in flight and queued
        (:func:`pm.device_failures.fail_device_tasks`)."""
        device = cast(str, failure.key)  # the registry's key: the device id
        doomed = self._lanes.drain(device)
        doomed += [m for m in failure.drain() if isinstance(m, Dispatch)]
        current = self._current.pop(device, None)
        if current is not None:
            doomed.insert(0, current)
        self._waits.forget(device)  # its queue is gone: what was handed to it is failed below
        fail_device_tasks(self._nursery, device, failure.error, doomed)
        return Directive.STOP
