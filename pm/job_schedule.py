"""The job actor's schedule: its holds before ``startAt`` and between windows, and what it
does at ``endAt`` (see :mod:`pm.schedule` for the rules, a pure function of the instant).

A mixin of :class:`pm.jobs.Job`. When the job is made (created, or resumed after a restart)
its schedule holds are set from the clock at once, before anything can be sent; then one
timer task per scheduled job asks the schedule again at each instant its answer may change
and posts the change to the job's own mailbox (``SetHold``/``ClearHold`` of ``scheduled`` and
``outside-window``; at ``endAt`` a ``paused`` hold or a graceful ``StopJob``), so the
aggregator stays the only writer of the record. Nothing about the schedule is stored beyond
the job's options and holds: a restarted gateway recomputes the same holds from the clock.

Restart/error policy: a request the job refuses (already paused, already stopping, final)
is an answer, not an error; the timer then carries on or ends with the job. The timer sleeps
on trio's clock for wall-clock differences (like the expiry timer) and evaluates at the
later of the wall clock and the instant it waited for, so a clock a hair behind never
reopens a window early.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import trio

from actors import ActorRef, ActorStopped, AskTimeout

from .job_contract import ClearHold, JobActorMessage, SetHold, StopJob
from .job_options import HoldReason
from .schedule import ScheduleHold, epoch_to_datetime, schedule_state
from .schemas import WaitingReason
from .send_queue import SendQueue
from .state import JobRecord

#: The holds a schedule owns (a user's ``paused`` is never touched, except at ``endAt``).
SCHEDULE_HOLDS: tuple[HoldReason, ...] = ("scheduled", "outside-window")
# How long the timer waits for its own job to answer (the aggregator answers at once).
ASK_TIMEOUT = 30.0


def schedule_holds(hold: ScheduleHold | None) -> list[HoldReason]:
    """The schedule holds a job has when the schedule answers ``hold``. An ended schedule
    holds like a closed window until the timer pauses or stops the job."""
    if hold is None:
        return []
    return ["scheduled"] if hold == "scheduled" else ["outside-window"]


def held_reason(holds: list[HoldReason]) -> WaitingReason:
    """What a task of a job with ``holds`` waits for: a pause, else the schedule."""
    return "job-paused" if "paused" in holds else "outside-window"


class JobSchedule:
    """Schedule handling of a job actor (see the module docstring)."""

    record: JobRecord
    ref: ActorRef[JobActorMessage] | None
    _wall_clock: Callable[[], float]
    _expiring: list[Any]
    _queue: SendQueue

    def _hold_for_schedule(self) -> None:
        """Set the schedule holds now (the job is being made; nothing is sent yet)."""
        record = self.record
        schedule = record.options.schedule
        if schedule is None or record.final:
            return
        state = schedule_state(schedule, epoch_to_datetime(self._wall_clock()))
        kept = [hold for hold in record.holds if hold not in SCHEDULE_HOLDS]
        record.set_holds(kept + schedule_holds(state.hold))
        if record.holds:
            reason = held_reason(record.holds)
            for task in self._queue.waiting():
                record.mark_waiting(task, reason)

    def _schedule_ended_at(self) -> datetime | None:
        """The job's ``endAt`` if its schedule has ended by now, else ``None``: nothing may be
        sent after it, so a pause then (its own, or a user's) is for good."""
        schedule = self.record.options.schedule
        if schedule is None or schedule.end_at is None:
            return None
        if epoch_to_datetime(self._wall_clock()) < schedule.end_at:
            return None
        return schedule.end_at

    def _start_timers(self, nursery: trio.Nursery) -> None:
        """Start the job's expiry timer and schedule timer, each only if it has work."""
        if self._expiring:
            nursery.start_soon(self._time_expiry, name=f"job:{self.record.id}:expiry")
        if self.record.options.schedule is not None:
            nursery.start_soon(self._time_schedule, name=f"job:{self.record.id}:schedule")

    async def _time_expiry(self) -> None:
        raise NotImplementedError  # pm.job_rollout.JobRollout's

    async def _time_schedule(self) -> None:
        """The job's schedule timer (see the module docstring)."""
        schedule = self.record.options.schedule
        assert schedule is not None
        waited_for = 0.0
        while not self.record.final:
            now = max(self._wall_clock(), waited_for)
            state = schedule_state(schedule, epoch_to_datetime(now))
            wanted = schedule_holds(state.hold)
            for reason in SCHEDULE_HOLDS:
                if reason in wanted and reason not in self.record.holds:
                    await self._ask(lambda reply, reason=reason: SetHold(reason, reply))
                elif reason not in wanted and reason in self.record.holds:
                    await self._ask(lambda reply, reason=reason: ClearHold(reason, reply))
            if state.hold == "ended":
                await self._end_schedule(schedule.end_behavior)
                return
            if state.until is None:
                return
            waited_for = state.until.timestamp()
            await trio.sleep(max(0.0, waited_for - self._wall_clock()))

    async def _end_schedule(self, behavior: str) -> None:
        if behavior == "cancel":
            await self._ask(StopJob)
            return
        await self._ask(lambda reply: SetHold("paused", reply))
        # Paused now: the closed-window hold would keep it from sending after a resume.
        for reason in SCHEDULE_HOLDS:
            if reason in self.record.holds:
                await self._ask(lambda reply, reason=reason: ClearHold(reason, reply))

    async def _ask(self, message: Callable[[Any], JobActorMessage]) -> None:
        """Post ``message`` to this job's own mailbox and wait for its answer (a refusal
        included); a job that stops meanwhile ends the timer with it."""
        reports = self.ref
        if reports is None:
            raise AssertionError(f"job {self.record.id} runs without a mailbox reference")
        try:
            await reports.ask(message, timeout=ASK_TIMEOUT)
        except (ActorStopped, AskTimeout):
            pass  # the job ended (its actor cancels this timer), or is stuck: its own problem
