"""The job actor's rollout (pm/jobs.py, pm/job_rollout.py, pm/send_queue.py) on trio's virtual
clock, with recording devices: window, rate, abort, retries, holds and the graceful stop."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from actors import ActorRef, open_mailbox
from pm.config import WatchersConfig
from pm.job_contract import ClearHold, Refused, SetHold, StopJob
from pm.job_options import AbortCriterion, JobOptions, RetryOptions, RolloutOptions
from pm.jobs import Job, JobActorMessage
from pm.state import RETRY_ID_STRIDE, JobRecord
from pm.task_machine import TaskHeldBack, TaskSent, TaskSettled
from tests.test_jobs import EPOCH, RecordingDevices, RecordingStore, record, virtual_wall_clock


@asynccontextmanager
async def rollout_job(
    job_record: JobRecord, options: JobOptions
) -> AsyncIterator[tuple[Job, RecordingDevices, ActorRef[JobActorMessage]]]:
    job_record.options = options
    devices = RecordingDevices()
    job = Job(
        job_record,
        devices,
        RecordingStore(),
        watchers=WatchersConfig(),
        wall_clock=virtual_wall_clock(),
        random=random.Random(7).random,
    )
    ref, inbox = open_mailbox(f"job:{job.id}", 4096)
    job.ref = ref
    # The hang guard, in virtual seconds: far beyond every wait of these tests.
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(job.run, inbox, math.inf)
            await trio.testing.wait_all_tasks_blocked()
            yield job, devices, ref
            nursery.cancel_scope.cancel()


async def settle(ref: ActorRef[JobActorMessage], task_id: int, status: str = "resolved") -> None:
    await ref.tell(TaskSent(task_id))
    await ref.tell(TaskSettled(task_id, status, None if status != "error" else {"code": 503}))  # type: ignore[arg-type]
    await trio.testing.wait_all_tasks_blocked()


async def sleep_until(moment: float) -> None:
    await trio.sleep_until(moment)
    await trio.testing.wait_all_tasks_blocked()


async def test_the_window_holds_back_tasks_until_others_settle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = JobOptions(rollout=RolloutOptions(max_in_flight=3))
    async with rollout_job(record(10), options) as (job, devices, ref):
        assert devices.dispatched == [1, 2, 3]
        assert job.record.tasks[3].waiting == "rollout-window"
        view = job.record.view()
        assert view.rollout is not None and (
            view.rollout.max_in_flight,
            view.rollout.in_flight,
        ) == (3, 3)
        await settle(ref, 2)
        assert devices.dispatched == [1, 2, 3, 4]
        for task_id in (1, 3, 4, 5, 6, 7, 8, 9, 10):
            await settle(ref, task_id)
            settled = sum(task.final for task in job.record.tasks)
            assert len(devices.dispatched) - settled <= 3  # never more than the window out
        await job.ended.wait()
    assert job.record.status == "resolved"


async def test_the_rate_spaces_sends_evenly(autojump_clock: trio.testing.MockClock) -> None:
    options = JobOptions(rollout=RolloutOptions(max_per_minute=120))  # one every 0.5 s
    start = trio.current_time()
    async with rollout_job(record(200), options) as (job, devices, _):
        assert devices.dispatched == [1]
        assert job.record.tasks[1].waiting == "rollout-rate"
        await trio.sleep(60 - 1e-6)
        # 120 in the first minute of virtual time (2% allows 118..122): exactly.
        assert len(devices.dispatched) == 120
        assert trio.current_time() - start < 60


async def test_abort_cancel_stops_sending_and_ends_aborted_once_in_flight_tasks_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = JobOptions(
        rollout=RolloutOptions(max_in_flight=4),
        abort=[AbortCriterion(on="error", threshold_percent=50, min_settled=2)],
    )
    async with rollout_job(record(20), options) as (job, devices, ref):
        assert devices.dispatched == [1, 2, 3, 4]
        for task_id in (1, 2, 3, 4):
            await ref.tell(TaskSent(task_id))
        await settle(ref, 1, "resolved")
        assert devices.dispatched == [1, 2, 3, 4, 5]
        await settle(ref, 2, "error")  # 1 of 2: 50%, the minimum sample: trips
        view = job.record.view()
        assert view.stopped_by == 0 and view.abort and view.abort[0].tripped
        assert (view.abort[0].matching, view.abort[0].settled) == (1, 2)
        assert not job.final  # tasks 3 and 4 are in flight: they finish normally
        # Task 5 was handed out but not sent: it is cancelled, like every task not sent.
        assert [t.status for t in job.record.tasks[4:]] == ["cancelled"] * 16
        assert devices.dispatched == [1, 2, 3, 4, 5]  # nothing new after the trip
        await ref.tell(TaskSettled(3, "resolved", None))
        await ref.tell(TaskSettled(4, "error", {"code": 500}))
        await job.ended.wait()
    assert job.record.status == "aborted"
    assert (job.record.finish_count, job.record.error_count) == (2, 18)


async def test_abort_pause_holds_the_job_until_resumed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = JobOptions(
        rollout=RolloutOptions(max_in_flight=2),
        abort=[AbortCriterion(on="failed", threshold_percent=100, min_settled=1, action="pause")],
    )
    async with rollout_job(record(5), options) as (job, devices, ref):
        await settle(ref, 1, "timeout")
        assert job.record.status == "paused" and job.record.holds == ["paused"]
        assert devices.dispatched == [1, 2]
        # Task 2 was queued on its device: its turn comes while the job is paused.
        await ref.tell(TaskHeldBack(2))
        await trio.testing.wait_all_tasks_blocked()
        assert job.record.tasks[1].waiting == "job-paused" and devices.dispatched == [1, 2]
        view = await ref.ask(lambda reply: ClearHold("paused", reply), timeout=5)
        assert not isinstance(view, Refused) and view.status == "dispatching"
        await trio.testing.wait_all_tasks_blocked()
        # The task put back by the window and the one held back go next, then the rest.
        assert devices.dispatched[:2] == [1, 2] and sorted(devices.dispatched[2:]) == [2, 3]
        for task_id in (2, 3, 4, 5):
            await settle(ref, task_id, "error")  # the criterion tripped once: no new pause
        await job.ended.wait()
    assert job.record.status == "resolved"


async def test_pause_resume_and_a_graceful_cancel_refuse_the_wrong_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with rollout_job(record(4), JobOptions()) as (job, devices, ref):
        assert devices.dispatched == [1, 2, 3, 4]  # no options: all at once, as before
        refused = await ref.ask(lambda reply: ClearHold("paused", reply), timeout=5)
        assert isinstance(refused, Refused) and "not held" in refused.message
        await ref.ask(lambda reply: SetHold("paused", reply), timeout=5)
        refused = await ref.ask(lambda reply: SetHold("paused", reply), timeout=5)
        assert isinstance(refused, Refused) and "already held" in refused.message
        await ref.tell(TaskSent(1))
        for task_id in (2, 3):
            await ref.tell(TaskHeldBack(task_id))  # their turn came while paused
        view = await ref.ask(StopJob, timeout=5)
        assert not isinstance(view, Refused) and view.finish_at is None  # task 1 is in flight
        assert [t.status for t in job.record.tasks] == [
            "sent",
            "cancelled",
            "cancelled",
            "cancelled",
        ]
        refused = await ref.ask(StopJob, timeout=5)
        assert isinstance(refused, Refused)
        await ref.tell(TaskSettled(1, "resolved", None))
        await job.ended.wait()
    assert job.record.status == "cancelled" and job.record.finish_count == 1


async def test_a_failed_attempt_is_retried_after_its_backoff_with_a_new_request_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = JobOptions(retry=RetryOptions(max=2, delay=1, factor=2, max_delay=60))
    start = trio.current_time()
    async with rollout_job(record(1), options) as (job, devices, ref):
        (task,) = job.record.tasks
        await settle(ref, 1, "error")
        assert (task.status, task.waiting, task.attempts) == ("pending", "retry-backoff", 1)
        assert task.next_attempt_at == EPOCH + 1
        assert task.request_id == 1 + RETRY_ID_STRIDE
        await sleep_until(start + 1 - 1e-3)
        assert len(devices.dispatched) == 1
        await sleep_until(start + 1)
        assert len(devices.dispatched) == 2  # after 1 s: the delay
        await settle(ref, 1, "timeout")
        await sleep_until(start + 3 - 1e-3)
        assert len(devices.dispatched) == 2
        await sleep_until(start + 3)
        assert len(devices.dispatched) == 3  # then 2 s: the factor
        await settle(ref, 1, "error")  # the third attempt: max 2 retries spent
        await job.ended.wait()
    assert (task.status, task.attempts, job.record.retried_count) == ("error", 3, 1)
    view = task.view()
    assert [a.status for a in view.task.previous_attempts] == ["error", "timeout"]  # type: ignore[union-attr]
    assert [a.request_id for a in view.task.previous_attempts] == [1, 1 + RETRY_ID_STRIDE]  # type: ignore[union-attr]


async def test_only_a_tasks_last_attempt_counts_for_abort(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = JobOptions(
        retry=RetryOptions(max=1, delay=0.5),
        abort=[AbortCriterion(on="error", threshold_percent=1, min_settled=1)],
    )
    async with rollout_job(record(2), options) as (job, devices, ref):
        await settle(ref, 1, "error")  # retried: not an outcome
        assert job.record.view().abort[0].settled == 0  # type: ignore[index]
        await trio.sleep(0.5)
        await trio.testing.wait_all_tasks_blocked()
        assert devices.dispatched == [1, 2, 1]
        await settle(ref, 1, "resolved")
        await settle(ref, 2, "resolved")
        await job.ended.wait()
    assert job.record.status == "resolved"
    abort = job.record.view().abort
    assert abort is not None and (abort[0].matching, abort[0].settled) == (0, 2)


async def test_a_task_waiting_for_its_retry_does_not_expire_unsent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job_record = record(1)
    (task,) = job_record.tasks
    task.expires_at = EPOCH + 1  # "must have been sent by": its first attempt was
    start = trio.current_time()
    async with rollout_job(job_record, JobOptions(retry=RetryOptions(max=1, delay=5))) as (
        job,
        devices,
        ref,
    ):
        await settle(ref, 1, "error")
        await sleep_until(start + 2)  # past its expiresAt
        assert (task.status, task.waiting) == ("pending", "retry-backoff")
        await sleep_until(start + 5)
        assert devices.dispatched == [1, 1]
        await settle(ref, 1, "resolved")
        await job.ended.wait()
    assert task.status == "resolved"


async def test_a_cancel_criterion_stops_a_job_another_criterion_paused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = JobOptions(
        abort=[
            AbortCriterion(on="error", threshold_percent=10, min_settled=1, action="pause"),
            AbortCriterion(on="error", threshold_percent=50, min_settled=3, action="cancel"),
        ]
    )
    async with rollout_job(record(5), options) as (job, devices, ref):
        for task_id in (1, 2, 3):
            await ref.tell(TaskSent(task_id))
        await settle(ref, 1, "error")
        assert job.record.status == "paused" and job.record.view().stopped_by == 0
        await settle(ref, 2, "error")
        await settle(ref, 3, "resolved")  # 2 of 3 errors: the second criterion trips
        await job.ended.wait()
    assert job.record.status == "aborted" and job.record.view().stopped_by == 1
    assert [t.status for t in job.record.tasks] == [
        "error",
        "error",
        "resolved",
        "cancelled",
        "cancelled",
    ]
