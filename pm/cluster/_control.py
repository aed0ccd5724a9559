"""Job-wide control in a cluster: pause, resume, cancel and abort trips of a job whose parts
run on several gateways, recorded in the job's row and followed by every gateway.

The row's ``holds``, ``ending`` and ``rollout_state`` columns (the ones a single gateway
stores for the same purposes) are the job's *job-wide control*: the job actors of a cluster
(one per job and shard) never write them, they only follow them (:class:`JobWide`, read by
each gateway's poll, pm/shard_control.py). Only two kinds of writers change them:

- a control request (``POST /jobs/{id}/pause|resume|cancel``) on any gateway,
  :func:`request_control`;
- the first gateway that sees an abort criterion hold on the job-wide counts,
  :func:`trip_abort`.

Each change is a *compare-and-set*: the row is read, the transition is decided here in
Python (:func:`decide`, pure, the single gateway's rules and messages), and written by an
``UPDATE ... WHERE`` that holds only if the control columns are still what was read and the
job is not final. Two gateways racing get one winner; the loser reads again and, the state
having moved, gets the single gateway's refusal (HTTP 409), e.g. "already held (paused)".

Error handling: the database's errors propagate (:class:`ControlRequests` turns a storage
fault into a 503; the poll retries at its next turn); a refusal raises
:class:`~pm.job_contract.JobStateError`.
PostgreSQL or SQLite: plain SQL, ``?`` placeholders.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec
import trio

from ..job_contract import JobStateError
from ..job_options import DEFAULT_OPTIONS, AbortCriterion, HoldReason, JobOptions
from ..outcomes import OutcomeHistogram, counts_by_status
from ..rollout import RolloutState, matches
from ..schedule import epoch_to_datetime
from ..schemas import FINAL_JOB_STATUSES, JobStatus
from ..store._connection import Connection
from ..store._errors import StoreUnavailable

ControlAction = Literal["pause", "resume", "cancel"]

_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode

# How many times a request reads and tries again when another writer changed the row
# between its read and its write (each retry follows a change that went through).
MAX_ATTEMPTS = 20


class JobWide(msgspec.Struct, frozen=True):
    """What every part of a job follows: whether it is paused job-wide, and the status it
    ends with (``resolved`` while it runs; ``cancelled`` or ``aborted`` once stopping)."""

    paused: bool = False
    ending: JobStatus = "resolved"


RUNNING = JobWide()


class ControlRow(msgspec.Struct, frozen=True, kw_only=True):
    """The columns of a job's row a control decision reads (``holds``, ``ending`` and
    ``rollout_state`` as stored: compared as text by the conditional write)."""

    id: int
    status: JobStatus
    final: bool
    holds_text: str | None
    ending: JobStatus
    rollout_state_text: str | None
    options: JobOptions

    @property
    def holds(self) -> list[HoldReason]:
        return [] if self.holds_text is None else _json_decode(self.holds_text)

    @property
    def job_wide(self) -> JobWide:
        return JobWide("paused" in self.holds, self.ending)

    def rollout_state(self) -> RolloutState:
        if self.rollout_state_text is None:
            return RolloutState()
        return _json_decode(self.rollout_state_text, type=RolloutState)


class ControlChange(msgspec.Struct, frozen=True, kw_only=True):
    """The control columns a decision writes (``paused`` also sets the row's status)."""

    holds: list[HoldReason]
    ending: JobStatus
    rollout_state: RolloutState


def decide(action: ControlAction, row: ControlRow, now: float) -> ControlChange:
    """The change ``action`` makes to the job ``row`` at ``now`` (epoch seconds), with the
    single gateway's rules (pm/job_rollout.py: ``_set_hold``, ``_clear_hold``, ``_stop``).

    Error handling: raises :class:`JobStateError` (409) with the single gateway's sentence
    when the job's state does not allow it.
    """
    holds, job_id = row.holds, row.id
    if row.final:  # pm.engine_control.JobControl._ask's sentence
        raise JobStateError(f"job {job_id} is {row.status}: it has finished")
    change = ControlChange(holds=holds, ending=row.ending, rollout_state=row.rollout_state())
    if action == "pause":
        if "paused" in holds:
            raise JobStateError(f"job {job_id} is already held (paused)")
        return msgspec.structs.replace(change, holds=[*holds, "paused"])
    if action == "resume":
        if "paused" not in holds:
            raise JobStateError(f"job {job_id} is not held (paused): it is {row.status}")
        end_at = _schedule_ended_at(row.options, now)
        if end_at is not None:
            raise JobStateError(
                f"job {job_id} cannot be resumed: its schedule ended at {end_at.isoformat()}"
                " (endAt) and nothing is sent after it; cancel it and submit a new job with a"
                " new schedule"
            )
        return msgspec.structs.replace(change, holds=[h for h in holds if h != "paused"])
    if action == "cancel":
        if row.ending != "resolved":
            raise JobStateError(f"job {job_id} is {row.status}: nothing to cancel")
        return msgspec.structs.replace(change, ending="cancelled")
    raise AssertionError(f"unknown control action {action!r}")


def _schedule_ended_at(options: JobOptions, now: float) -> datetime | None:
    schedule = options.schedule
    if schedule is None or schedule.end_at is None:
        return None
    return schedule.end_at if epoch_to_datetime(now) >= schedule.end_at else None


# -- abort criteria on the job-wide counts -------------------------------------------------


def first_trip(
    criteria: Sequence[AbortCriterion], tripped: Sequence[int], outcomes: OutcomeHistogram
) -> int | None:
    """The first criterion not tripped before that holds on the job-wide ``outcomes`` (the
    counts every gateway's commit recomputes from the tasks), or ``None``. The test is
    :class:`pm.rollout.AbortWatch`'s, on the counts as they are now."""
    by_status = counts_by_status(outcomes)
    settled = sum(by_status.values())
    for index, criterion in enumerate(criteria):
        if index in tripped or settled < criterion.min_settled:
            continue
        matching = sum(n for status, n in by_status.items() if matches(criterion.on, status))
        if matching * 100 >= criterion.threshold_percent * settled:
            return index
    return None


def tripped_change(row: ControlRow, index: int) -> ControlChange:
    """What tripping criterion ``index`` writes: it is tripped for good and, unless the job
    stops already, pauses it or stops it ``aborted`` (as pm/job_rollout.py ``_outcome``)."""
    state = row.rollout_state()
    state.tripped.append(index)
    change = ControlChange(holds=row.holds, ending=row.ending, rollout_state=state)
    if row.ending != "resolved":
        return change  # stopping already: the trip changes nothing else
    state.stopped_by = index
    if row.options.abort is not None and row.options.abort[index].action == "pause":
        if "paused" in change.holds:
            return change
        return msgspec.structs.replace(change, holds=[*change.holds, "paused"])
    return msgspec.structs.replace(change, ending="aborted")


def schedule_end_change(row: ControlRow) -> ControlChange | None:
    """What the job's schedule decides at its ``endAt`` (pm/job_schedule.py
    ``_end_schedule``): a pause, or a graceful stop ``cancelled``; ``None`` if the job is
    final or so already."""
    schedule = row.options.schedule
    if row.final or schedule is None:
        return None
    change = ControlChange(holds=row.holds, ending=row.ending, rollout_state=row.rollout_state())
    if schedule.end_behavior == "cancel":
        if row.ending != "resolved":
            return None
        return msgspec.structs.replace(change, ending="cancelled")
    if "paused" in change.holds:
        return None
    return msgspec.structs.replace(change, holds=[*change.holds, "paused"])


# -- the database --------------------------------------------------------------------------

_READ = "SELECT id, status, finish_at, holds, ending, rollout_state, options FROM jobs WHERE id = ?"
# The conditional write: only if the control columns are still those read and the job is
# not final. The status follows a pause and a resume as on one gateway (set_holds); the
# recount of each commit keeps "paused" (pm/cluster/_writes.py).
_WRITE = """
UPDATE jobs SET holds = ?, ending = ?, rollout_state = ?,
    status = CASE
        WHEN ? THEN 'paused'
        WHEN status = 'paused' THEN
            CASE WHEN pending_count < total_count THEN 'dispatching' ELSE 'pending' END
        ELSE status END
WHERE id = ? AND finish_at IS NULL
    AND coalesce(holds, '') = ? AND ending = ? AND coalesce(rollout_state, '') = ?
RETURNING id
"""


def control_row(row: Sequence[Any]) -> ControlRow:
    """A :class:`ControlRow` from the columns of ``_READ`` (and of the poll's read)."""
    job_id, status, finish_at, holds, ending, rollout_state, options = row
    return ControlRow(
        id=int(job_id),
        status=status,
        final=finish_at is not None or status in FINAL_JOB_STATUSES,
        holds_text=holds,
        ending=ending,
        rollout_state_text=rollout_state,
        options=DEFAULT_OPTIONS if options is None else _json_decode(options, type=JobOptions),
    )


def read_control_row(connection: Connection, job_id: int) -> ControlRow | None:
    row = connection.execute(_READ, (job_id,)).fetchone()
    return None if row is None else control_row(row)


def write_change(connection: Connection, row: ControlRow, change: ControlChange) -> bool:
    """Write ``change`` if the row is still as ``row`` read it; returns whether it was."""
    state = _json_encode(change.rollout_state).decode()
    # Only the job-wide hold: a schedule's holds are each part's own, from the clock (the
    # row shows the one it had when it was created until the first write here).
    paused = "paused" in change.holds
    written = connection.execute(
        _WRITE,
        (
            '["paused"]' if paused else None,
            change.ending,
            None if state == "{}" else state,
            paused,
            row.id,
            row.holds_text or "",
            row.ending,
            row.rollout_state_text or "",
        ),
    )
    return written.fetchone() is not None


def request_control(connection: Connection, job_id: int, action: ControlAction, now: float) -> bool:
    """Record ``action`` on job ``job_id`` for every gateway to follow (module docstring).
    Returns ``False`` when there is no such job. Runs in a worker thread.

    Error handling: :class:`JobStateError` when the job's state does not allow it (read
    after any write that raced this one); the database's errors propagate.
    """
    for _ in range(MAX_ATTEMPTS):
        row = read_control_row(connection, job_id)
        if row is None:
            return False
        if write_change(connection, row, decide(action, row, now)):
            return True
    raise JobStateError(
        f"job {job_id} changed {MAX_ATTEMPTS} times while this {action} was being recorded; "
        "try again"
    )


def trip_abort(connection: Connection, row: ControlRow, index: int) -> bool:
    """Record that criterion ``index`` tripped (``row`` as last read): only the first
    gateway's write goes through; returns whether it was this one's."""
    return write_change(connection, row, tripped_change(row, index))


class ControlRequests:
    """A gateway's control requests (``POST /jobs/{id}/pause|resume|cancel``), recorded one at
    a time on a connection of their own, in a worker thread.

    Error handling: :class:`JobStateError` as :func:`request_control`; a storage fault (the
    database lost, read-only) raises :class:`~pm.store.StoreUnavailable` (503) naming it,
    nothing recorded; any other database error propagates.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._lock = trio.Lock()

    async def record(self, job_id: int, action: ControlAction, now: float) -> bool:
        """:func:`request_control`, from the trio thread."""
        connection = self.connection
        async with self._lock:
            try:
                return await trio.to_thread.run_sync(
                    request_control, connection, job_id, action, now
                )
            except connection.error_types as error:
                if not connection.is_storage_fault(error):
                    raise
                raise StoreUnavailable(
                    f"job {job_id}: the {action} could not be recorded "
                    f"({connection.fault_reason(error)}); retry when GET /readyz answers 200"
                ) from None
