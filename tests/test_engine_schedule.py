"""A job whose schedule window opens, through the engine and its real device actors on trio's
virtual clock (MQTT replaced by a recording publisher), across a restart too. Real sockets:
tests/integration/test_job_control.py and test_schedule_recovery.py."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pm.engine import JobStateError
from tests.fakes import RecordingPublisher, answer
from tests.stores import running_store
from tests.test_engine import EPOCH, GUARD, restartable
from tests.test_engine_rollout import rollout_request

# EPOCH is 2027-01-15T08:00:00Z; this window opens at minute 30 of every hour for 10 minutes.
WINDOW = {"windows": [{"cron": "30 * * * *", "durationMinutes": 10}]}


async def until(epoch_seconds: float) -> None:
    await trio.sleep_until(epoch_seconds - EPOCH)
    await trio.testing.wait_all_tasks_blocked()


async def test_nothing_is_sent_until_the_window_opens_then_the_job_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                job = await engine.submit(rollout_request(["a", "b"], schedule=WINDOW))
                await until(EPOCH + 30 * 60 - 1)
                assert publisher.published == []
                assert job.record.holds == ["outside-window"]
                assert {task.waiting for task in job.record.tasks} == {"outside-window"}
                await until(EPOCH + 30 * 60)
                assert job.record.holds == []
                requests = [request for _, request in publisher.published]
                assert sorted(topic for topic, _ in publisher.published) == [
                    "/remote/a",
                    "/remote/b",
                ]
                for request in requests:
                    answer(engine, request)
                await job.ended.wait()
                assert job.record.status == "resolved"
                assert job.record.finish_at == EPOCH + 30 * 60


async def test_a_restart_outside_the_window_holds_until_it_opens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                job = await engine.submit(rollout_request(["a"], schedule=WINDOW))
                job_id = job.id
                await until(EPOCH + 60)
            # Down from 08:01 to 08:20; back up outside the window.
            await until(EPOCH + 20 * 60)
            async with restartable(store, publisher) as engine:
                assert engine.recover() == 1
                resumed = engine.get(job_id)
                assert resumed is not None and resumed.record.holds == ["outside-window"]
                await until(EPOCH + 30 * 60 - 1)
                assert publisher.published == []
                await until(EPOCH + 30 * 60)
                [(topic, request)] = publisher.published
                assert topic == "/remote/a"
                answer(engine, request)
                await resumed.ended.wait()
                assert resumed.record.status == "resolved"


async def test_a_job_paused_by_its_schedules_end_cannot_be_resumed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    end_at = EPOCH + 20  # before the task in flight times out (30 s)
    schedule = {"endAt": "2027-01-15T08:00:20Z"}
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                job = await engine.submit(
                    rollout_request(["a", "b"], schedule=schedule, rollout={"maxInFlight": 1})
                )
                await until(EPOCH + 1)
                [(_, first)] = publisher.published
                # A user's pause before endAt may be resumed.
                await engine.pause(job.id)
                view = await engine.resume(job.id)
                assert view is not None and view.status == "dispatching"
                await until(end_at)
                assert job.record.holds == ["paused"]
                with pytest.raises(JobStateError, match=r"schedule ended at 2027-01-15T08:00:20"):
                    await engine.resume(job.id)
                answer(engine, first)
                await trio.testing.wait_all_tasks_blocked()
                assert len(publisher.published) == 1  # nothing sent after endAt
                assert job.record.status == "paused"
                view = await engine.cancel(job.id)
                assert view is not None and view.status == "cancelled"
