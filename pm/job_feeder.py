"""The job actor's feeder: hands the job's tasks to device actors, in order, as it may.

A mixin of :class:`pm.jobs.Job` (whose module docstring says how the feeder and the
aggregator share the job): it takes tasks from the job's :class:`~pm.send_queue.SendQueue`
as the job's gate, pacing and holds allow, marks why a task will wait on its device
(``waiting``), and hands it over with :meth:`~pm.job_contract.TaskDispatcher.dispatch`,
which waits while the device's mailbox is full (back-pressure).

Error policy: none of its own. The feeder runs in the job actor's nursery; whatever it
raises fails the job actor (the job ends ``cancelled``), and the job's end cancels it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from actors import ActorRef

from .job_contract import JobActorMessage, SendGate, TaskDispatcher
from .send_queue import SendQueue
from .state import JobRecord, TaskRecord

# Tasks a job hands to device actors between two yields to the scheduler.
FEED_CHUNK = 64


class JobFeeder:
    """The feeder of a job actor (see the module docstring). The attributes below are set by
    :class:`pm.jobs.Job`."""

    record: JobRecord
    gate: SendGate
    ref: ActorRef[JobActorMessage] | None
    _queue: SendQueue
    _devices: TaskDispatcher
    _resumed_in_flight: list[TaskRecord]
    # pm.jobs.Job's: a task's waiting reason changed (fed to watchers and stored).
    _waiting_changed: Callable[[TaskRecord], None]

    async def _feed_devices(self) -> None:
        reports = self.ref
        if reports is None:
            raise AssertionError(f"job {self.record.id} runs without a mailbox reference")
        handed_out = 0
        queue, gate, record = self._queue, self.gate, self.record
        pacer = queue.pacer
        high = record.options.priority == "high"
        for task in self._resumed_in_flight:
            queue.handed_out(task, _trio_now())
            await self._devices.dispatch(task, reports, gate, high_priority=high)
        self._resumed_in_flight = []
        while not record.final:
            if gate.held:
                await queue.wait_for_work()
                continue
            task = queue.take()
            if task is None:
                await queue.wait_for_work()
                continue
            if task.final:
                continue  # ended while it waited here (expired, or its job is stopping)
            if pacer is not None:
                now = _trio_now()
                blocked = pacer.blocked(now)
                if blocked is not None:
                    queue.put_back(task)
                    if record.mark_waiting(task, blocked):
                        self._waiting_changed(task)
                    await queue.wait_for_work(
                        pacer.next_send_at if blocked == "rollout-rate" else math.inf
                    )
                    continue
                queue.handed_out(task, now)
            # The feeder writes only this live field of a task it has not handed out yet.
            reason = self._devices.waiting_reason(task.device)
            if reason is not None:
                if record.mark_waiting(task, reason):
                    self._waiting_changed(task)
            elif task.waiting is not None and record.clear_waiting(task):
                self._waiting_changed(task)
            await self._devices.dispatch(task, reports, gate, high_priority=high)
            handed_out += 1
            # dispatch() does not yield while the device's mailbox has room: yield every
            # FEED_CHUNK tasks so the devices (and everyone else) get to run. The devices
            # woken by one chunk publish in one scheduler batch, so their requests leave
            # in one write (a yield per task cost a socket write per request); each
            # device's own requests stay in order, the order *across* devices within a
            # chunk is trio's (forwards or backwards).
            if handed_out % FEED_CHUNK == 0:
                await trio.lowlevel.checkpoint()


def _trio_now() -> float:
    return trio.current_time()
