"""The job actor on trio's virtual clock: feeding devices, aggregating their reports, ending.

Devices are stood in for by a recording :class:`~pm.job_contract.TaskDispatcher` and the
store by a recording :class:`~pm.job_contract.ChangeRecorder`: the job actor is pure dispatch
logic around its mailbox. Record-level counting rules are in tests/test_state.py; the same
paths through real device actors are in tests/test_engine.py and tests/integration/.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from actors import ActorRef, open_mailbox
from pm.config import WatchersConfig
from pm.job_contract import SendGate
from pm.jobs import FEED_CHUNK, Job, JobActorMessage
from pm.schemas import WaitingReason
from pm.state import JobRecord, TaskRecord
from pm.task_machine import TaskProgress, TaskReport, TaskSent, TaskSettled
from tests.stores import job_on_devices

EPOCH = 1_800_000_000.0


class RecordingDevices:
    """Takes every task at once (never back-pressures) and remembers what it was told."""

    def __init__(self) -> None:
        self.dispatched: list[int] = []
        self.reports: ActorRef[TaskReport] | None = None
        self.abandoned: list[int] = []

    async def dispatch(
        self,
        task: TaskRecord,
        reports: ActorRef[TaskReport],
        gate: SendGate | None = None,
        *,
        high_priority: bool = False,
    ) -> None:
        self.dispatched.append(task.id)
        self.reports = reports

    def abandon(self, job_id: int) -> int:
        self.abandoned.append(job_id)
        return 1

    def waiting_reason(self, device: str) -> WaitingReason | None:
        return None

    def holds(self, task: TaskRecord) -> bool:
        return False

    def parked(self, task: TaskRecord) -> bool:
        return False

    def release_parked(self, job_id: int) -> int:
        return 0


class RecordingStore:
    def __init__(self) -> None:
        self.tasks: list[tuple[int, str]] = []
        self.jobs: list[str] = []

    def task_changed(self, task: TaskRecord) -> None:
        self.tasks.append((task.id, task.status))

    def job_changed(self, record: JobRecord) -> None:
        self.jobs.append(record.status)


def record(devices: int, timeout: float | None = None) -> JobRecord:
    return job_on_devices(devices, created_at=EPOCH, timeout=timeout)


def virtual_wall_clock() -> Callable[[], float]:
    start = trio.current_time()
    return lambda: EPOCH + trio.current_time() - start


@asynccontextmanager
async def running_job(
    job_record: JobRecord, deadline: float = math.inf
) -> AsyncIterator[tuple[Job, RecordingDevices, RecordingStore, ActorRef[JobActorMessage]]]:
    devices, store = RecordingDevices(), RecordingStore()
    job = Job(
        job_record, devices, store, watchers=WatchersConfig(), wall_clock=virtual_wall_clock()
    )
    ref, inbox = open_mailbox(f"job:{job.id}", 64)
    job.ref = ref
    async with trio.open_nursery() as nursery:
        nursery.start_soon(job.run, inbox, deadline)
        yield job, devices, store, ref
        nursery.cancel_scope.cancel()


async def test_reports_are_aggregated_into_counts_progress_and_the_final_status(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_job(record(4)) as (job, devices, store, ref):
        await trio.testing.wait_all_tasks_blocked()
        assert devices.dispatched == [1, 2, 3, 4]
        assert devices.reports is ref  # devices report to the job's own mailbox
        for task_id in (1, 2, 3, 4):
            await ref.tell(TaskSent(task_id))
        await ref.tell(TaskProgress(1, 50))
        await ref.tell(TaskProgress(1, 30))  # progress never goes back
        await ref.tell(TaskProgress(2, 100))  # an interim answer stays below 100
        await trio.testing.wait_all_tasks_blocked()
        view = job.record.view()
        assert (view.status, view.progress) == ("dispatching", (50 + 99) // 4)
        await trio.sleep(3)
        await ref.tell(TaskSettled(1, "resolved", {"ok": 1}))
        await ref.tell(TaskSettled(2, "error", {"code": 500}))
        await ref.tell(TaskSettled(3, "timeout", None))
        await ref.tell(TaskSettled(3, "resolved", None))  # a task settles once
        await ref.tell(TaskSettled(99, "resolved", None))  # not this job's task: ignored
        await ref.tell(TaskSettled(4, "resolved", None))
        await job.ended.wait()
    view = job.record.view()
    assert (view.status, view.done_count, view.finish_count, view.error_count) == (
        "resolved",
        4,
        2,
        2,
    )
    assert view.progress == 100
    assert [t.status for t in job.record.tasks] == ["resolved", "error", "timeout", "resolved"]
    assert job.record.finish_at == EPOCH + 3  # from the wall clock it was given
    assert devices.abandoned == []  # nothing was in flight any more
    # Every change reached the store, in order: 4 sent, 2 progress, 4 settled.
    assert len(store.tasks) == 10 and store.tasks[-1] == (4, "resolved")
    assert store.jobs[-1] == "resolved"


async def test_cancel_ends_unsettled_tasks_and_abandons_those_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_job(record(3)) as (job, devices, store, ref):
        await ref.tell(TaskSettled(1, "resolved", None))
        await trio.testing.wait_all_tasks_blocked()
        view = await job.cancel()
        assert view.status == "cancelled"
        assert [t.status for t in job.record.tasks] == ["resolved", "cancelled", "cancelled"]
        assert devices.abandoned == [job.id]
        await job.ended.wait()
        # A report arriving after the end changes nothing.
        ref.tell_nowait(TaskSettled(2, "resolved", None))
        await trio.testing.wait_all_tasks_blocked()
    assert job.record.tasks[1].status == "cancelled"
    assert (job.record.finish_count, job.record.error_count) == (1, 2)


async def test_the_job_timeout_ends_it_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    async with running_job(record(2, timeout=5), deadline=start + 5) as (job, devices, _, ref):
        await ref.tell(TaskSettled(1, "resolved", None))
        await job.ended.wait()
        assert trio.current_time() - start == 5
    assert [t.status for t in job.record.tasks] == ["resolved", "timeout"]
    assert (job.record.status, job.record.finish_at) == ("timeout", EPOCH + 5)
    assert devices.abandoned == [job.id]


async def test_tasks_are_handed_out_in_chunks_between_yields(
    autojump_clock: trio.testing.MockClock,
) -> None:
    total = 3 * FEED_CHUNK + 5
    seen: list[int] = []
    devices_box: list[RecordingDevices] = []

    async def observe() -> None:
        # Runs whenever the feeder yields: records how far it got each time.
        while not devices_box or len(devices_box[0].dispatched) < total:
            if devices_box:
                seen.append(len(devices_box[0].dispatched))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(observe)
        async with running_job(record(total)) as (_, devices, _, _):
            devices_box.append(devices)
            await trio.testing.wait_all_tasks_blocked()
    # The feeder yielded between chunks (others ran meanwhile), never inside one.
    progress = set(seen) - {0}
    assert progress and max(progress) < total
    assert all(handed_out % FEED_CHUNK == 0 for handed_out in progress), sorted(progress)


async def test_unsent_tasks_expire_on_time_even_when_the_wall_clock_runs_slow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job_record = record(3)
    first, second, third = job_record.tasks
    first.expires_at = second.expires_at = EPOCH + 5
    third.expires_at = EPOCH + 9
    start = trio.current_time()
    devices, store = RecordingDevices(), RecordingStore()
    # The wall clock runs 0.1% slow against trio's (NTP slews it by up to 0.05%): when the
    # timer wakes at an expiry, the wall clock has not quite reached it.
    job = Job(
        job_record,
        devices,
        store,
        watchers=WatchersConfig(),
        wall_clock=lambda: EPOCH + (trio.current_time() - start) * 0.999,
    )
    ref, inbox = open_mailbox(f"job:{job.id}", 64)
    job.ref = ref
    async with trio.open_nursery() as nursery:
        nursery.start_soon(job.run, inbox)
        await ref.tell(TaskSent(second.id))
        await trio.sleep(5)
        await trio.testing.wait_all_tasks_blocked()
        assert [t.status for t in job_record.tasks] == ["expired", "sent", "pending"]
        assert first.result == {"error": "expired before it could be sent", "waiting": None}
        await ref.tell(TaskSettled(second.id, "resolved", None))
        with trio.fail_after(60):
            await job.ended.wait()
        assert trio.current_time() - start == pytest.approx(9.005)
        assert [t.status for t in job_record.tasks] == ["expired", "resolved", "expired"]
        assert (job_record.expired_count, job_record.error_count) == (2, 2)
        assert job_record.status == "resolved"
