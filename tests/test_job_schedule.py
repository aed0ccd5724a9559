"""A scheduled job's actor on trio's virtual clock: its holds before startAt, between
windows and at endAt, and after a restart (pm.job_schedule). The schedule's own rules (cron,
time zones, DST) are in tests/test_schedule.py; the same through the real gateway in
tests/integration/test_job_control.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio
import trio.testing

from actors import open_mailbox
from pm.config import WatchersConfig
from pm.job_options import JobOptions
from pm.jobs import Job
from pm.schedule import Schedule
from pm.state import JobRecord
from tests.test_jobs import EPOCH, RecordingDevices, RecordingStore, record

# EPOCH is 2027-01-15T08:00:00Z.
MINUTE = 60.0
HOUR = 3600.0
SCHEDULE = {
    "startAt": "2027-01-15T08:05:00Z",
    "endAt": "2027-01-15T10:00:00Z",
    "windows": [{"cron": "30 * * * *", "durationMinutes": 10}],
}


def scheduled(devices: int, schedule: dict[str, Any]) -> JobRecord:
    plain = record(devices)
    options = JobOptions(schedule=msgspec.convert(schedule, Schedule))
    return JobRecord(plain.id, plain.tasks, None, plain.created_at, options)


@asynccontextmanager
async def running(
    job_record: JobRecord, since_epoch: float = 0.0
) -> AsyncIterator[tuple[Job, Callable[[], float]]]:
    """The job actor, its wall clock ``since_epoch`` seconds after EPOCH at the start."""
    start = trio.current_time()

    def wall_clock() -> float:
        return EPOCH + since_epoch + trio.current_time() - start

    job = Job(
        job_record, RecordingDevices(), RecordingStore(), watchers=WatchersConfig(),
        wall_clock=wall_clock,
    )  # fmt: skip
    ref, inbox = open_mailbox(f"job:{job.id}", 64)
    job.ref = ref
    async with trio.open_nursery() as nursery:
        nursery.start_soon(job.run, inbox)
        yield job, wall_clock
        nursery.cancel_scope.cancel()


async def at(wall_clock: Callable[[], float], seconds_after_epoch: float) -> None:
    """Sleep (virtual time) until the wall clock reads EPOCH + ``seconds_after_epoch``, then
    let the job's timer and aggregator run."""
    await trio.sleep(EPOCH + seconds_after_epoch - wall_clock())
    await trio.testing.wait_all_tasks_blocked()


async def test_holds_follow_start_windows_and_end_on_the_virtual_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job_record = scheduled(2, {**SCHEDULE, "endBehavior": "cancel"})
    # Held from the moment it is made: nothing may go out before the timer first runs.
    async with running(job_record) as (job, wall_clock):
        assert (job_record.status, job_record.holds, job.gate.held) == (
            "scheduled", ["scheduled"], True,
        )  # fmt: skip
        assert [task.waiting for task in job_record.tasks] == ["outside-window"] * 2
        expected = [
            (5 * MINUTE - 1, "scheduled", ["scheduled"]),
            (5 * MINUTE, "pending", ["outside-window"]),
            (30 * MINUTE - 1, "pending", ["outside-window"]),
            (30 * MINUTE, "pending", []),
            (40 * MINUTE - 1, "pending", []),
            (40 * MINUTE, "pending", ["outside-window"]),
            (HOUR + 30 * MINUTE, "pending", []),
            (HOUR + 40 * MINUTE, "pending", ["outside-window"]),
        ]
        for moment, status, holds in expected:
            await at(wall_clock, moment)
            assert (job_record.status, job_record.holds) == (status, holds), moment
            assert job.gate.held == bool(holds)
        # endAt with endBehavior cancel: unsent tasks end cancelled, the job cancelled.
        await at(wall_clock, 2 * HOUR)
        assert job_record.status == "cancelled" and job_record.final
        assert [task.status for task in job_record.tasks] == ["cancelled", "cancelled"]
        assert job_record.finish_at == EPOCH + 2 * HOUR


async def test_end_at_with_pause_leaves_a_paused_job_a_user_can_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job_record = scheduled(1, {"endAt": "2027-01-15T08:10:00Z", "endBehavior": "pause"})
    async with running(job_record) as (job, wall_clock):
        assert (job_record.status, job_record.holds) == ("pending", [])
        await at(wall_clock, 10 * MINUTE)
        assert (job_record.status, job_record.holds) == ("paused", ["paused"])
        assert not job_record.final and job.gate.held


async def test_a_job_resumed_inside_a_window_is_not_held_by_its_stored_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Stored while outside a window (and paused by a user); the gateway comes back at 08:33,
    # inside the 08:30 window: the schedule hold is recomputed, the user's pause kept.
    job_record = scheduled(1, SCHEDULE)
    job_record.set_holds(["paused", "outside-window"])
    async with running(job_record, since_epoch=33 * MINUTE) as (job, wall_clock):
        assert job_record.holds == ["paused"]
        await at(wall_clock, 40 * MINUTE)
        assert job_record.holds == ["paused", "outside-window"]


async def test_a_job_resumed_after_end_at_ends_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job_record = scheduled(1, {**SCHEDULE, "endBehavior": "cancel"})
    async with running(job_record, since_epoch=3 * HOUR) as (job, wall_clock):
        # Held (like a closed window) from the start, then stopped by the timer.
        assert job.gate.held
        await trio.testing.wait_all_tasks_blocked()
        assert job_record.status == "cancelled"
