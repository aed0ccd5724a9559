"""How a clustered gateway follows the job-wide control of the jobs whose parts it runs
(pm/cluster/_control.py records it in each job's row), and trips abort criteria job-wide.

Two halves:

- :class:`JobWideFollower`, mixed into a job's part (:class:`pm.shard_service.ShardJob`):
  its actor applies :class:`FollowJobWide` messages to its part as a single gateway's job
  actor applies a pause, a resume or a graceful stop (pm/job_rollout.py), and its abort
  criteria are never evaluated on its own share of the outcomes;
- :class:`JobWideControl`, run by the dispatcher (pm/shard_dispatch.py) at each poll: it
  reads the unfinished jobs' rows (their ids are the poll's new-job discovery too), tells
  every part whose job's control changed, and trips an abort criterion that holds on the
  job-wide counts (first gateway wins).

Timing: a control request, or a trip, reaches a gateway's parts at its next poll (every
``store.commit_interval``); a trip is decided on counts committed by every gateway, so it
acts at most about three commit windows after the outcome that made the criterion hold:
the outcome's commit, the poll that trips, the poll of each gateway that applies it
(docs/scale-out.md). A job whose row is gone (deleted on another gateway) has its parts
ended ``cancelled`` here; their writes find no row and are dropped (pm/cluster/_writes.py).

Error handling: the reads and the trip's write run on the dispatcher's connection and its
fault handling (a storage fault is retried at the next poll); a part that has ended is
skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import msgspec
import trio

from actors import ActorRef, ActorStopped

from .cluster._control import (
    RUNNING,
    ControlRow,
    JobWide,
    control_row,
    first_trip,
    schedule_end_change,
    trip_abort,
    write_change,
)
from .job_options import AbortCriterion, HoldReason, JobOptions
from .outcomes import OutcomeHistogram, counts_by_status
from .rollout import AbortWatch
from .schemas import JobStatus
from .state import JobRecord
from .store._connection import Connection
from .store._shard_tasks import UNFINISHED_STATUSES

if TYPE_CHECKING:
    from .shard_service import ShardJob, ShardService

logger = logging.getLogger(__name__)

# The poll's one read: every unfinished job's control columns and outcome counts
# (jobs_by_status serves the IN list).
_POLL = (
    "SELECT id, status, finish_at, holds, ending, rollout_state, options, outcomes FROM jobs"
    f" WHERE status IN ({', '.join('?' * len(UNFINISHED_STATUSES))})"
)


class FollowJobWide(msgspec.Struct, frozen=True, tag=True):
    """To a job's part, from its gateway's poll: the job's control as its row has it now,
    or ``deleted`` (its row is gone)."""

    control: JobWide
    deleted: bool = False


class JobWideFollower:
    """A job part's side (see the module docstring); the attributes and methods named here
    are :class:`pm.jobs.Job`'s."""

    record: JobRecord
    followed: JobWide
    _abort: AbortWatch | None
    # pm.job_rollout.JobRollout's (after this class in ShardJob's bases: no stubs here).
    _stop: Callable[[JobStatus], None]
    _finish: Callable[[str], None]
    _set_hold: Callable[[HoldReason], object]
    _clear_hold: Callable[[HoldReason], object]

    def start_following(self) -> None:
        """Before the part's actor starts: its record holds the job's control as read with
        its tasks; the criteria are job-wide, never evaluated on this part's share."""
        self._abort = None
        self.record.abort_watch = None
        self.followed = JobWide("paused" in self.record.holds, self.record.ending)
        if self.record.ending != "resolved" and not self.record.final:
            self._stop(self.record.ending)  # stopping job-wide: its unsent tasks end so

    def _follow(self, message: FollowJobWide) -> None:
        """Apply a change of the job's control to this part (on its actor's task)."""
        before, wide = self.followed, message.control
        self.followed = wide
        if self.record.final:
            return
        if message.deleted:
            self._finish("cancelled")
            return
        if wide.ending != "resolved" and self.record.ending == "resolved":
            self._stop(wide.ending)
        # Transitions only: a pause of this part's own schedule (at endAt) is not undone.
        # A refusal (final meanwhile, a schedule that ended) changes nothing.
        if wide.paused and not before.paused:
            self._set_hold("paused")
        elif before.paused and not wide.paused:
            self._clear_hold("paused")


class PolledJobs:
    """One poll's read: each unfinished job's control, and its row for the abort check."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = {int(row[0]): row for row in rows}

    @property
    def ids(self) -> set[int]:
        return set(self.rows)

    def job_wide(self, job_id: int) -> JobWide:
        _, _, _, holds, ending, *_ = self.rows[job_id]
        if holds is None and ending == "resolved":
            return RUNNING  # the usual row: nothing to decode
        return JobWide(holds is not None and "paused" in msgspec.json.decode(holds), ending)


def read_unfinished(connection: Connection) -> PolledJobs:
    """The poll's read (a worker thread)."""
    return PolledJobs(connection.execute(_POLL, UNFINISHED_STATUSES).fetchall())


class JobWideControl:
    """The dispatcher's side (see the module docstring)."""

    def __init__(self) -> None:
        self._previous: dict[int, JobWide] = {}
        # Each job's options (None: none), decoded once; the outcome counts its abort
        # criteria were last checked on; the jobs whose schedule's end is written.
        self._options: dict[int, JobOptions | None] = {}
        self._checked: dict[int, str] = {}
        self._schedule_ended: set[int] = set()
        self.trips = 0

    async def follow(self, polled: PolledJobs, services: Iterable[ShardService]) -> None:
        """Tell the parts whose job's control changed (or whose job is gone)."""
        now = {job_id: polled.job_wide(job_id) for job_id in polled.rows}
        changed = {job_id for job_id, wide in now.items() if self._previous.get(job_id) != wide}
        gone = set(self._previous) - set(now)
        self._previous = now
        if not (changed or gone):
            return
        for service in list(services):
            for part in list(service.jobs.values()):
                wide = now.get(part.id)
                if wide is None:
                    await _tell(part, FollowJobWide(part.followed, deleted=True))
                elif wide != part.followed:
                    await _tell(part, FollowJobWide(wide))

    def check(self, connection: Connection, polled: PolledJobs, now: float) -> None:
        """Write what the jobs' own rules decide job-wide (a worker thread; the next poll of
        every gateway applies it): an abort criterion that holds on a job's job-wide counts
        trips, and a schedule whose ``endAt`` passed pauses or stops its job (every part
        does so itself at that instant too; the row then says so, and a resume is refused
        as on one gateway). ``now``: epoch seconds."""
        for job_id in set(self._options) - polled.ids:
            del self._options[job_id]
            self._checked.pop(job_id, None)
            self._schedule_ended.discard(job_id)
        for job_id, row in polled.rows.items():
            options = self._options_of(job_id, row[6])
            if options is None:
                continue
            if options.abort:
                self._check_abort(connection, row, options.abort)
            schedule = options.schedule
            if (
                schedule is not None
                and schedule.end_at is not None
                and job_id not in self._schedule_ended
                and now >= schedule.end_at.timestamp()
            ):
                control = control_row(row[:7])
                change = schedule_end_change(control)
                if change is None or write_change(connection, control, change):
                    self._schedule_ended.add(job_id)  # else the row moved: next poll

    def _check_abort(
        self, connection: Connection, row: tuple[Any, ...], criteria: list[AbortCriterion]
    ) -> None:
        job_id, outcomes = int(row[0]), row[7]
        if outcomes is None or self._checked.get(job_id) == outcomes:
            return  # no outcome since the last look
        self._checked[job_id] = outcomes
        control = control_row(row[:7])
        histogram = msgspec.json.decode(outcomes, type=OutcomeHistogram)
        index = first_trip(criteria, control.rollout_state().tripped, histogram)
        if index is None:
            return
        if trip_abort(connection, control, index):
            self.trips += 1
            _log_trip(control, criteria[index], index, histogram)
        else:
            # The row moved on since the poll read it: another gateway's trip (the next
            # read shows it tripped), a control request, or a paced job's coordinator
            # storing a ramp step in the same column. Look again at the next poll even if
            # no outcome comes meanwhile (the last ones may be in already).
            del self._checked[job_id]

    def _options_of(self, job_id: int, options: str | None) -> JobOptions | None:
        if job_id not in self._options:
            decoded = None if options is None else msgspec.json.decode(options, type=JobOptions)
            self._options[job_id] = decoded
        return self._options[job_id]


async def _tell(part: ShardJob, message: FollowJobWide) -> None:
    if part.ref is None:
        return
    # A part's mailbox takes FollowJobWide beside a job's messages (ShardJob._handle).
    mailbox = cast("ActorRef[Any]", part.ref)
    try:
        await mailbox.tell(message)
    except ActorStopped:
        pass  # it ended meanwhile: nothing left to follow
    await trio.lowlevel.checkpoint()


def _log_trip(
    row: ControlRow, criterion: AbortCriterion, index: int, outcomes: OutcomeHistogram
) -> None:
    settled = sum(counts_by_status(outcomes).values())
    logger.warning(
        "job %d: abort criterion %d tripped job-wide (%s at %g%% of %d outcomes): %s",
        row.id,
        index,
        criterion.on,
        criterion.threshold_percent,
        settled,
        "paused" if criterion.action == "pause" else "aborting",
        extra={"job_id": row.id, "criterion": index, "action": criterion.action},
    )
