"""The job actor's handling of expiry and rollout: unsent tasks that expire, outcomes seen by
the pacing and the abort criteria, retries after their backoff, holds (pause, schedule) and
stopping gracefully.

A mixin of :class:`pm.jobs.Job` (its aggregator calls these, on the job actor's task only):
it reads and writes the job's record, queue and gate, and tells the feed and the store.

Error policy: a request the job's state does not allow (pause a paused job, resume one not
paused, hold or cancel a finished one) is answered :class:`~pm.job_contract.Refused`, never
raised, so the actor goes on; the engine raises it as ``JobStateError`` (HTTP 409).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import cast

import trio

from actors import ActorRef

from .job_contract import (
    ChangeRecorder,
    ExpiryDue,
    JobActorMessage,
    Refused,
    SendGate,
    TaskDispatcher,
)
from .job_options import HoldReason
from .job_schedule import held_reason
from .rollout import AbortWatch, retry_delay, should_retry
from .schemas import JobStatus, JobView
from .send_queue import SendQueue
from .state import JobRecord, TaskRecord
from .task_machine import expired_unsent
from .watch import JobFeed

logger = logging.getLogger("pm.jobs")


class JobRollout:
    """Rollout handling of a job actor (see the module docstring). The attributes below are
    set by :class:`pm.jobs.Job`."""

    record: JobRecord
    feed: JobFeed
    gate: SendGate
    _abort: AbortWatch | None
    _queue: SendQueue
    _devices: TaskDispatcher
    _recorder: ChangeRecorder
    _wall_clock: Callable[[], float]
    _random: Callable[[], float]
    ref: ActorRef[JobActorMessage] | None
    _expiring: list[TaskRecord]
    _expired_through: int
    # pm.job_schedule.JobSchedule's (after this class in pm.jobs.Job's bases: no stub here).
    _schedule_ended_at: Callable[[], datetime | None]

    @property
    def id(self) -> int:
        return self.record.id

    @property
    def final(self) -> bool:
        return self.record.final

    # -- expiry --------------------------------------------------------------------------

    async def _time_expiry(self) -> None:
        """The job's one expiry timer: posts :class:`ExpiryDue` at each distinct expiry."""
        reports = self.ref
        if reports is None:
            raise AssertionError(f"job {self.id} runs without a mailbox reference")
        for expires_at in sorted({cast(float, task.expires_at) for task in self._expiring}):
            # Wall-clock epoch seconds (they survive a restart), waited for on trio's clock.
            await trio.sleep(max(0.0, expires_at - self._wall_clock()))
            # The instant travels with the message: trio's clock and the wall clock may differ
            # by a hair, and a task must not miss its expiry because of it.
            await reports.tell(ExpiryDue(expires_at))

    def _expire_due(self, until: float) -> None:
        now = self._wall_clock()
        record = self.record
        expiring = self._expiring
        while self._expired_through < len(expiring):
            task = expiring[self._expired_through]
            if cast(float, task.expires_at) > until:
                return
            self._expired_through += 1
            # A task held by its device actor is that actor's to expire (it may be publishing).
            # A retry waiting for its next attempt was sent: it never "expired before it could
            # be sent" (nor does it when parked for its device: pm.device_waits).
            if task.status != "pending" or task.attempts or self._devices.holds(task):
                continue
            settled = expired_unsent(task.id, task.waiting)
            if record.settle(task, "expired", settled.result, now):
                self._outcome(task)

    # -- rollout: outcomes, retries, holds, stopping ----------------------------------------

    def _outcome(self, task: TaskRecord) -> None:
        """``task`` reached its final status: pacing, ramp and abort criteria see it."""
        self._queue.settled(task, resolved=task.status == "resolved")
        self._task_changed(task)
        if self._abort is None:
            return
        tripped = self._abort.on_outcome(task.status)
        # A criterion that trips while the job stops already changes nothing; one with
        # "cancel" tripping while another's "pause" holds the job stops it.
        if tripped is None or self.final or self.record.ending != "resolved":
            return
        criterion = self._abort.criteria[tripped]
        self.record.rollout_state.stopped_by = tripped
        logger.warning(
            "job %d: abort criterion %d tripped (%s at %g%% of %d outcomes): %s",
            self.id,
            tripped,
            criterion.on,
            criterion.threshold_percent,
            self._abort.settled,
            "paused" if criterion.action == "pause" else "aborting",
            extra={"job_id": self.id, "criterion": tripped, "action": criterion.action},
        )
        if criterion.action == "pause":
            self._set_hold("paused")
        else:
            self._stop("aborted")

    def _retry(self, task: TaskRecord, status: str, result: object) -> bool:
        """Whether the failed attempt of ``task`` is retried (it then waits its backoff)."""
        options = self.record.options.retry
        if options is None or status == "resolved" or self.record.ending != "resolved":
            return False
        if not should_retry(options, status, result, task.attempts):
            return False
        delay = retry_delay(options, task.attempts, self._random)
        now = self._wall_clock()
        if not self.record.retry_later(task, status, result, now, now + delay):  # type: ignore[arg-type]
            return False
        self._queue.retry_at(task, trio.current_time() + delay)
        self._task_changed(task)
        return True

    def _held_back(self, task: TaskRecord) -> None:
        if self.record.ending != "resolved":
            # Stopping: what comes back unsent ends cancelled.
            self._queue.settled(task, resolved=False)
            if self.record.settle(task, "cancelled", None, self._wall_clock()):
                self._task_changed(task)
            return
        self._queue.held_back(task)
        if self.record.mark_waiting(task, held_reason(self.record.holds)):
            self._waiting_changed(task)

    def _set_hold(self, reason: HoldReason) -> JobView | Refused:
        record = self.record
        if self.final:
            return Refused(f"job {self.id} is {record.status}: it cannot be held")
        if reason in record.holds:
            return Refused(f"job {self.id} is already held ({reason})")
        record.set_holds([*record.holds, reason])
        self.gate.held = True
        for task in self._queue.waiting():
            if record.mark_waiting(task, "job-paused" if reason == "paused" else "outside-window"):
                self._waiting_changed(task)
        self._job_changed()
        return record.view()

    def _clear_hold(self, reason: HoldReason) -> JobView | Refused:
        record = self.record
        if self.final:
            return Refused(f"job {self.id} is {record.status}: nothing to resume")
        if reason not in record.holds:
            return Refused(f"job {self.id} is not held ({reason}): it is {record.status}")
        if reason == "paused" and (end_at := self._schedule_ended_at()) is not None:
            return Refused(
                f"job {self.id} cannot be resumed: its schedule ended at "
                f"{end_at.isoformat()} (endAt) and nothing is sent after it; cancel it and"
                " submit a new job with a new schedule"
            )
        record.set_holds([hold for hold in record.holds if hold != reason])
        self.gate.held = bool(record.holds) or record.ending != "resolved"
        self._queue.poke()
        self._job_changed()
        return record.view()

    def _stop(self, status: JobStatus) -> None:
        """Stop gracefully: tasks not sent end ``cancelled``; the job ends ``status`` once
        the tasks in flight have finished (at once if none is)."""
        record, devices = self.record, self._devices
        record.ending = status
        self.gate.held = True
        now = self._wall_clock()
        for task in record.tasks:
            if task.status != "pending":
                continue
            # A task whose turn came is being published unless parked for its device: its
            # report (sent, or held back) is on its way.
            if devices.holds(task) and not devices.parked(task):
                continue
            self._queue.settled(task, resolved=False)
            if record.settle(task, "cancelled", None, now):
                self.feed.task_changed(task.view)
                self._recorder.task_changed(task)
        devices.release_parked(self.id)
        if not self.final and record.pending_count == 0 and record.sent_count == 0:
            raise AssertionError(f"job {self.id} has no task left but is not final")
        self._queue.poke()
        self._job_changed()

    # -- the end -------------------------------------------------------------------------

    def _finish(self, status: str) -> None:
        settled = self.record.finish(status, self._wall_clock())  # type: ignore[arg-type]
        # Device actors stop waiting on this job's tasks in flight (now final).
        abandoned = self._devices.abandon(self.id)
        if settled:
            # One line per job, not per task: a job timeout can settle 100k tasks at once.
            logger.info(
                "job %d %s: %d unsettled tasks end %s (%d in flight abandoned)",
                self.id,
                status,
                len(settled),
                status,
                abandoned,
                extra={
                    "job_id": self.id,
                    "status": status,
                    "settled": len(settled),
                    "abandoned": abandoned,
                },
            )
        for task in settled:
            self.feed.task_changed(task.view)
            self._recorder.task_changed(task)
        self.feed.job_changed()
        self._recorder.job_changed(self.record)

    def _log_finished(self) -> None:
        record = self.record
        logger.info(
            "job %d finished: %s, %d/%d resolved, %d errors",
            record.id,
            record.status,
            record.finish_count,
            len(record.tasks),
            record.error_count,
            extra={
                "job_id": record.id,
                "status": record.status,
                "total_count": len(record.tasks),
                "finish_count": record.finish_count,
                "error_count": record.error_count,
            },
        )

    def _task_changed(self, task: TaskRecord) -> None:
        raise NotImplementedError  # pm.jobs.Job's

    def _waiting_changed(self, task: TaskRecord) -> None:
        raise NotImplementedError  # pm.jobs.Job's

    def _job_changed(self) -> None:
        self.feed.job_changed()
        self._recorder.job_changed(self.record)
