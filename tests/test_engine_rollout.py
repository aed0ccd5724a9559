"""Rollouts through the engine on trio's virtual clock, with a recording publisher: what a
device sees on a retry, pause/resume/cancel and their refusals, and a restart in the middle of
a rollout (window and ramp, a retry's backoff, a pause, a tripped criterion: all resumed)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from pm.engine import JobStateError
from pm.schemas import JobRequest
from pm.state import RETRY_ID_STRIDE
from tests.fakes import RecordingPublisher, answer
from tests.job_api import entry, job_request
from tests.stores import running_store
from tests.test_engine import EPOCH, GUARD, restartable


def rollout_request(devices: list[str], **options: Any) -> JobRequest:
    return job_request(entry(devices, "/r"), **options)


async def test_a_retry_reaches_the_device_with_a_new_id_and_its_answer_settles_the_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                job = await engine.submit(rollout_request(["a"], retry={"max": 1, "delay": 2}))
                await trio.testing.wait_all_tasks_blocked()
                (first,) = publisher.requests_to("/remote/a")
                task_id = job.record.tasks[0].id
                assert first["id"] == task_id
                answer(engine, first, 503)
                await trio.sleep(2)
                await trio.testing.wait_all_tasks_blocked()
                _, second = publisher.requests_to("/remote/a")
                assert second["id"] == task_id + RETRY_ID_STRIDE
                answer(engine, first, 200)  # a late answer to the first attempt: ignored
                await trio.testing.wait_all_tasks_blocked()
                assert job.record.tasks[0].status == "sent"
                answer(engine, second, 200)
                await job.ended.wait()
                assert job.record.tasks[0].status == "resolved"
                # A second answer to the first attempt's (settled) request id.
                assert engine.fleet.dropped["duplicate_answer"] == 1


async def test_sends_counts_the_copies_of_the_current_attempt_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                job = await engine.submit(rollout_request(["a"], retry={"max": 1, "delay": 2}))
                await trio.testing.wait_all_tasks_blocked()
                (first,) = publisher.requests_to("/remote/a")
                answer(engine, first, 503)
                await trio.testing.wait_all_tasks_blocked()
                view = job.record.tasks[0].view().task
                assert (view.status, view.attempts, view.sends) == ("pending", 1, 0)
                assert [a.sends for a in view.previous_attempts] == [1]  # type: ignore[union-attr]
                await trio.sleep(2)
                await trio.testing.wait_all_tasks_blocked()
                view = job.record.tasks[0].view().task
                assert (view.status, view.attempts, view.sends) == ("sent", 2, 1)


async def test_pause_resume_cancel_through_the_engine(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                job = await engine.submit(
                    rollout_request([f"d{n}" for n in range(6)], rollout={"maxInFlight": 2})
                )
                await trio.testing.wait_all_tasks_blocked()
                assert len(publisher.published) == 2
                view = await engine.pause(job.id)
                assert view is not None and view.status == "paused"
                with pytest.raises(JobStateError, match="already held"):
                    await engine.pause(job.id)
                listed, total = await engine.list(status="paused")  # from the store
                assert total == 1 and listed[0].id == job.id and listed[0].holds == ["paused"]
                for _, request in publisher.published:
                    answer(engine, request)
                await trio.testing.wait_all_tasks_blocked()
                assert len(publisher.published) == 2  # paused: nothing new
                view = await engine.resume(job.id)
                assert view is not None and view.status == "dispatching"
                await trio.testing.wait_all_tasks_blocked()
                assert len(publisher.published) == 4
                view = await engine.cancel(job.id)
                assert view is not None and view.finish_at is None  # two in flight
                with pytest.raises(JobStateError):
                    await engine.resume(job.id)
                for _, request in publisher.published[2:]:
                    answer(engine, request)
                await job.ended.wait()
                assert job.record.status == "cancelled"
                assert [t.status for t in job.record.tasks] == ["resolved"] * 4 + ["cancelled"] * 2
                with pytest.raises(JobStateError, match="finished"):
                    await engine.pause(job.id)
                assert await engine.pause(10**9) is None


async def test_a_restart_in_the_middle_of_a_rollout_resumes_where_it_was(
    autojump_clock: trio.testing.MockClock,
) -> None:
    devices = [f"d{n}" for n in range(12)]
    options = {
        "rollout": {
            "maxInFlight": 2,
            "ramp": {"factor": 2, "afterSucceeded": 2, "maxInFlight": 8},
        },
        "retry": {"on": ["error"], "max": 1, "delay": 100},
        "abort": [{"on": "error", "thresholdPercent": 90, "minSettled": 100}],
    }
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                job = await engine.submit(rollout_request(devices, **options))
                await trio.testing.wait_all_tasks_blocked()
                for _, request in publisher.published:
                    answer(engine, request)  # 2 resolved: the ramp's first step
                await trio.testing.wait_all_tasks_blocked()
                assert len(publisher.published) == 6  # the window is now 4
                retried = publisher.published[2][1]
                answer(engine, retried, 503)  # waits 100 s for its retry
                await trio.testing.wait_all_tasks_blocked()
                await engine.pause(job.id)
                # The retry waiting freed its place: a fourth task went out before the pause.
                in_flight_ids = {t.id for t in job.record.tasks if t.status == "sent"}
                assert len(in_flight_ids) == 4
                first_requests = [request for _, request in publisher.published]
                await trio.sleep(1)  # committed
            # Down for 10 s (SIGKILL or a stop: what was committed is what resumes).
            await trio.sleep(10)
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                resumed = engine.get(job.id)
                assert resumed is not None
                view = resumed.record.view()
                assert (view.status, view.holds) == ("paused", ["paused"])
                assert view.rollout and (view.rollout.max_in_flight, view.rollout.ramp_steps) == (
                    4,
                    1,
                )
                assert view.abort and (view.abort[0].settled, view.abort[0].matching) == (2, 0)
                waiting = [t for t in resumed.record.tasks if t.previous_attempts]
                assert len(waiting) == 1 and waiting[0].attempts == 1
                assert waiting[0].next_attempt_at == EPOCH + 100
                await trio.testing.wait_all_tasks_blocked()
                # Paused: nothing new goes out. The requests in flight at the stop are held
                # (in flight, re-sent when their devices are next seen); their answers finish
                # them.
                assert publisher.published == []
                held = {
                    engine.fleet.task_in_flight(t.device)
                    for t in resumed.record.tasks
                    if t.status == "sent"
                }
                assert held == in_flight_ids
                await engine.resume(job.id)
                await trio.testing.wait_all_tasks_blocked()
                assert publisher.published == []  # the window of 4 is still full
                for request in first_requests:
                    if request["id"] in in_flight_ids:
                        answer(engine, request)
                await trio.testing.wait_all_tasks_blocked()
                # 4 more resolved: the window is 8 now, and the 5 tasks never sent go out.
                assert len(publisher.published) == 5
                assert resumed.record.view().rollout.max_in_flight == 8  # type: ignore[union-attr]
                await trio.sleep_until(100 - 1e-3)
                await trio.testing.wait_all_tasks_blocked()
                assert retried["id"] not in {
                    r["id"] % RETRY_ID_STRIDE for _, r in publisher.published
                }
                await trio.sleep_until(100)
                await trio.testing.wait_all_tasks_blocked()
                # The retry after its 100 s backoff, counted across the restart, with its own id.
                assert retried["id"] + RETRY_ID_STRIDE in {r["id"] for _, r in publisher.published}


async def test_an_aborted_job_is_listed_with_the_criterion_that_stopped_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                job = await engine.submit(
                    rollout_request(
                        ["a", "b", "c"],
                        rollout={"maxInFlight": 1},
                        abort=[
                            {"on": "timeout", "thresholdPercent": 50},
                            {"on": "error", "thresholdPercent": 50},
                        ],
                    )
                )
                await trio.testing.wait_all_tasks_blocked()
                answer(engine, publisher.published[0][1], 500)
                await job.ended.wait()
                listed, total = await engine.list(status="aborted")
                assert total == 1 and listed[0].stopped_by == 1
                assert [t.status for t in job.record.tasks] == ["error", "cancelled", "cancelled"]
                plain = await engine.submit(rollout_request(["a"]))
                await trio.testing.wait_all_tasks_blocked()
                answer(engine, publisher.published[-1][1])
                await plain.ended.wait()
                listed, _ = await engine.list(status="resolved")
                assert listed[0].stopped_by is msgspec.UNSET  # no criteria: not shown


async def test_a_job_aborting_when_the_gateway_stops_ends_aborted_after_the_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = {
        "rollout": {"maxInFlight": 2},
        "abort": [{"on": "error", "thresholdPercent": 50, "minSettled": 1}],
    }
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                job = await engine.submit(rollout_request(["a", "b", "c", "d"], **options))
                await trio.testing.wait_all_tasks_blocked()
                # Which of the two goes first across devices is trio's scheduling.
                first, second = (request for _, request in publisher.published)
                answer(engine, first, 500)  # trips: the rest is cancelled, one is in flight
                await trio.testing.wait_all_tasks_blocked()
                assert not job.final
                await trio.sleep(1)  # committed
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                resumed = engine.get(job.id)
                assert resumed is not None and resumed.record.ending == "aborted"
                await trio.testing.wait_all_tasks_blocked()
                # Nothing new goes out; the task in flight at the stop is held until answered.
                assert publisher.published == []
                second_device = second["tunnel"].split("/")[2]  # /remote/{device}/response
                assert engine.fleet.task_in_flight(second_device) == second["id"]
                answer(engine, second)
                await resumed.ended.wait()
                assert resumed.record.status == "aborted"
                statuses = sorted(t.status for t in resumed.record.tasks)
                assert statuses == ["cancelled", "cancelled", "error", "resolved"]
