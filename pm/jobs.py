"""Job actors: one per job. Feed its tasks to device actors, aggregate what they report.

A job actor runs two tasks in its own nursery:

- the *feeder* (:mod:`pm.job_feeder`) hands tasks to device actors in order, waiting when a
  device's mailbox is full (back-pressure), and
- the *aggregator* consumes the job's mailbox: reports from device actors and cancel
  requests, applied to the :class:`~pm.state.JobRecord` it alone writes.

They are separate so that a feeder blocked on a full device mailbox can never stop the
aggregator from draining reports, which is what that device is waiting on (no deadlock).
The job timeout is a deadline on the aggregator; cancelling or timing out a job cancels the
feeder (queued tasks never reach devices) and tells the device side to abandon its tasks in
flight or waiting for their device (:meth:`~pm.job_contract.TaskDispatcher.abandon`: their
devices move on; a late answer is dropped as unexpected).

Expiry: a job whose tasks have an ``expiresAt`` runs a third task, one timer for the whole
job (never one per task), which posts :class:`~pm.job_contract.ExpiryDue` to the job's own
mailbox at each expiry; the aggregator then ends ``expired`` every task still pending at that
time, except the one a device actor holds (its turn came: that actor expires it itself, so a
request never leaves for a task the job already counts as expired). A task that ends while
queued is skipped when its turn comes: the device's queue order is never touched.

The feeder marks each task it queues with why it is not sent yet (``waiting``:
``device-offline``, ``device-busy``); a device actor reports ``device-offline`` when the
task's turn comes and its device is offline; the task's ``TaskSent`` clears it. ``waiting``
is stored with the task, so a restarted gateway shows the same reasons. Each copy of a
request a device actor publishes is counted in the task's ``sends`` (``TaskSent``, then one
``TaskResent`` per re-send).

Rollout (``pm/job_rollout.py``, the policy in ``pm/rollout.py``): the feeder takes tasks from
a :class:`~pm.send_queue.SendQueue` as the job's window and rate allow, and hands out nothing
while the job has a hold (paused, scheduled, outside its windows) or is stopping; a device
actor whose turn comes for a task of a held job sends it back (``TaskHeldBack``). A failed
attempt may go back to the queue for a retry after its backoff; abort criteria watch the
outcomes and pause or stop the job. Tasks in flight always finish.

The contract with device actors is narrow and one-way: a task goes out with a reference to
this job's mailbox, and reports come back as :mod:`pm.task_machine` messages. This module
never imports :mod:`pm.devices`; it names what it needs of it in
:class:`~pm.job_contract.TaskDispatcher`, and its mailbox's messages in :mod:`pm.job_contract`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import cast

import trio

from actors import ActorRef, ActorStopped, AskTimeout

from .config import WatchersConfig
from .job_contract import (
    CancelJob,
    ChangeRecorder,
    ClearHold,
    ExpiryDue,
    JobActorMessage,
    Refused,
    ReportsApplied,
    SendGate,
    SetHold,
    StopJob,
    TaskDispatcher,
)
from .job_feeder import FEED_CHUNK as FEED_CHUNK
from .job_feeder import JobFeeder
from .job_rollout import JobRollout
from .job_schedule import JobSchedule
from .rollout import AbortWatch, Pacer
from .schemas import JobView
from .send_queue import SendQueue
from .state import JobRecord, TaskRecord
from .task_machine import (
    TaskHeldBack,
    TaskProgress,
    TaskResent,
    TaskSent,
    TaskSettled,
    TaskWaiting,
)
from .watch import JobFeed, TaskMode, Watcher

logger = logging.getLogger(__name__)

# Reports a job's aggregator applies between two yields to the scheduler.
AGGREGATE_CHUNK = 256


class Job(JobFeeder, JobRollout, JobSchedule):
    """A job: its record, its mailbox reference and its feed for watchers.

    Args:
      record: the tasks and aggregate state (written only by this job's actor).
      devices: where tasks go.
      recorder: told of every change (the store).
      watchers: the ``[watchers]`` settings (see :mod:`pm.watch`).
      feed_capacity: task changes its feed keeps for lagging watchers (default
        ``watchers.queue_size``).
      wall_clock: epoch seconds for ``finishAt`` timestamps (tests pass a fake).
      random: numbers in [0, 1) for the retry jitter (tests pass a seeded one).
    """

    def __init__(
        self,
        record: JobRecord,
        devices: TaskDispatcher,
        recorder: ChangeRecorder,
        *,
        watchers: WatchersConfig,
        feed_capacity: int | None = None,
        wall_clock: Callable[[], float] = time.time,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.record = record
        self._random = random
        self._devices = devices
        self._recorder = recorder
        self._wall_clock = wall_clock
        self._watchers = watchers
        capacity = watchers.queue_size if feed_capacity is None else feed_capacity
        self.feed = JobFeed(lambda: record.view(collection=None), capacity)
        self.ref: ActorRef[JobActorMessage] | None = None
        self.ended = trio.Event()
        # Unsent tasks that expire, soonest first, and how many of them were dealt with.
        self._expiring = sorted(
            (task for task in record.tasks if task.expires_at is not None and not task.final),
            key=lambda task: cast(float, task.expires_at),
        )
        self._expired_through = 0
        options = record.options
        state = record.rollout_state
        self._abort = None
        if options.abort:
            outcomes = (task.status for task in record.tasks if task.final)
            self._abort = AbortWatch(options.abort, state, outcomes)
        pacer = None if options.rollout is None else Pacer(options.rollout, state)
        record.pacer, record.abort_watch = pacer, self._abort
        unsettled = [task for task in record.tasks if not task.final]
        now, trio_now = wall_clock(), _trio_now()
        # A resumed job's tasks in flight at the stop go out again first, whatever holds it
        # (in-flight tasks finish); the rest wait their turn, pacing and holds.
        self._resumed_in_flight = [task for task in unsettled if task.status == "sent"]
        self._queue = SendQueue(
            (task for task in unsettled if task.status == "pending" and not task.next_attempt_at),
            pacer,
            (
                (trio_now + max(0.0, cast(float, task.next_attempt_at) - now), task)
                for task in unsettled
                if task.next_attempt_at is not None
            ),
        )
        if pacer is not None:
            record.queued_reason = self._queue.queued_reason
        self._hold_for_schedule()  # before anything can be sent
        # Held while the job has a hold or is stopping: device actors send back its tasks.
        self.gate = SendGate()
        self.gate.held = bool(record.holds) or record.ending != "resolved"

    @property
    def runs_elsewhere(self) -> bool:
        """Read from the store and not final: another gateway runs it, not this one."""
        return self.ref is None and not self.final

    def watch(self, tasks: TaskMode = "each", interval: float = 0.0) -> Watcher:
        """A new watcher of this job; ``tasks`` says what it receives about tasks, ``interval``
        the least seconds between two of its snapshots (at least ``coalesce_interval``)."""
        settings = self._watchers
        return Watcher(
            self.feed,
            max(settings.coalesce_interval, interval),
            tasks,
            settings.max_updates_per_second,
            max_task_messages_per_second=settings.max_task_messages_per_second,
        )

    # -- called by the API ---------------------------------------------------------------

    async def cancel(self) -> JobView:
        """Cancel if running; returns the final snapshot either way."""
        if self.ref is not None and not self.final:
            try:
                return await self.ref.ask(CancelJob, timeout=30)
            except ActorStopped:
                pass
        await self.ended.wait()
        return self.record.view()

    async def apply_reports(self, timeout: float) -> None:  # noqa: ASYNC109
        """Return once the reports already in the job's mailbox are applied (and recorded),
        or after ``timeout`` seconds. A job that has ended has nothing left to apply."""
        if self.ref is None or self.final:
            return
        try:
            await self.ref.ask(ReportsApplied, timeout=timeout)
        except (ActorStopped, AskTimeout):
            pass  # it ended meanwhile (its final state is recorded), or it is stuck: stop anyway

    # -- the actor -----------------------------------------------------------------------

    async def run(
        self, inbox: trio.MemoryReceiveChannel[JobActorMessage], deadline: float = math.inf
    ) -> None:
        """The job actor. ``deadline`` is on trio's clock (job timeout, or none).

        ``self.ref`` (the other side of ``inbox``) is set by whoever spawned it.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._feed_devices, name=f"job:{self.id}:feeder")
                self._start_timers(nursery)
                with trio.move_on_at(deadline):
                    await self._aggregate(inbox)
                if not self.final:
                    self._finish("timeout")
                # Stops the feeder and any report still being delivered.
                nursery.cancel_scope.cancel()
        except Exception:
            # This actor failed: the job cannot go on.
            if not self.final:
                self._finish("cancelled")
            raise
        finally:
            # Also reached on shutdown (trio.Cancelled): the job is then left unfinished, as
            # stored, and resumes when the gateway starts again (its device actors are
            # cancelled with it: they run in the same engine).
            self.feed.close()
            self.ended.set()
            if self.final:
                self._log_finished()

    async def _aggregate(self, inbox: trio.MemoryReceiveChannel[JobActorMessage]) -> None:
        """Apply reports until the job is final or the mailbox closes.

        Reports already queued are taken without a scheduler round trip each (trio's
        receive() always yields, and the aggregator would fall behind its devices and
        fill its mailbox); it yields every AGGREGATE_CHUNK reports so others still run.
        """
        handled = 0
        record = self.record  # its `final` directly: this loop runs twice per task
        while not record.final:
            try:
                message = inbox.receive_nowait()
            except trio.WouldBlock:
                try:
                    message = await inbox.receive()
                except trio.EndOfChannel:
                    return
            except trio.EndOfChannel:
                return
            self._handle(message)
            handled += 1
            if handled % AGGREGATE_CHUNK == 0:
                await trio.lowlevel.checkpoint()

    def _handle(self, message: JobActorMessage) -> None:
        record = self.record
        # Each task's two reports first: a case is an isinstance check, in order.
        match message:
            case TaskSent(task_id, published):
                task = record.task(task_id)
                if task is not None and record.mark_sent(
                    task, self._wall_clock(), published=published
                ):
                    self._task_changed(task)
            case TaskSettled(task_id, status, result, code):
                task = record.task(task_id)
                # _retry() only when the job retries at all (a call less per task without).
                if (
                    task is not None
                    and record.options.retry is not None
                    and self._retry(task, status, result)
                ):
                    return
                if task is not None and record.settle(
                    task, status, result, self._wall_clock(), code
                ):
                    self._outcome(task)
                    # The per-task path: DEBUG only, and no extra dict built unless enabled.
                    if logger.isEnabledFor(logging.DEBUG):
                        logger.debug(
                            "task %d of job %d on device %s: %s",
                            task.id,
                            self.id,
                            task.device,
                            status,
                            extra={
                                "job_id": self.id,
                                "task_id": task.id,
                                "device": task.device,
                                "status": status,
                            },
                        )
            case TaskResent(task_id):
                task = record.task(task_id)
                if task is not None and record.mark_resent(task):
                    self._task_changed(task)
            case TaskProgress(task_id, progress):
                task = record.task(task_id)
                if task is not None and record.mark_progress(task, progress):
                    self._task_changed(task)
            case TaskWaiting(task_id, reason):
                task = record.task(task_id)
                if task is not None and record.mark_waiting(task, reason):
                    self._waiting_changed(task)
            case ExpiryDue(until):
                self._expire_due(until)
            case TaskHeldBack(task_id):
                task = record.task(task_id)
                if task is not None and not task.final:
                    self._held_back(task)
            case CancelJob(reply):
                self._finish("cancelled")
                reply.send(record.view())
            case SetHold(reason, reply):
                reply.send(self._set_hold(reason))
            case ClearHold(reason, reply):
                reply.send(self._clear_hold(reason))
            case StopJob(reply):
                if self.final or record.ending != "resolved":
                    reply.send(Refused(f"job {self.id} is {record.status}: nothing to cancel"))
                else:
                    self._stop("cancelled")
                    reply.send(record.view())
            case ReportsApplied(reply):
                reply.send(None)
            case _:
                raise AssertionError(f"unexpected job message {message!r}")

    def _waiting_changed(self, task: TaskRecord) -> None:
        # Stored (a restart shows the same reasons); the job's counts did not change.
        self.feed.task_changed(task.view)
        self._recorder.task_changed(task)

    def _task_changed(self, task: TaskRecord) -> None:
        self.feed.task_changed(task.view)
        self.feed.job_changed()
        self._recorder.task_changed(task)
        self._recorder.job_changed(self.record)


def _trio_now() -> float:
    return trio.current_time()
