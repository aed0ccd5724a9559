"""Why each waiting task is not sent, as the API shows it (``__task.waiting`` of the task views
``GET /jobs/{id}/tasks`` encodes), through the engine on the virtual clock (recording
publisher, inline in-memory store):

- every task still in its job's queue shows its job's window or rate, derived when read (the
  tasks' own stored reasons stay empty: nothing is written when the window moves);
- a task whose turn came while the fleet budget (``[tasks] max_in_flight``) is full shows
  ``fleet-budget`` until it is sent.
"""

from __future__ import annotations

from typing import Any

import msgspec
import trio
import trio.testing

from pm.engine import Engine
from pm.jobs import Job
from pm.state import TaskSelection
from tests.fakes import answer
from tests.test_device_turns import request, running_engine


async def shown_waiting(engine: Engine, job: Job, **selection: Any) -> list[str | None]:
    """``__task.waiting`` of each of the job's tasks (that match ``selection``), as JSON."""
    page = await engine.list_tasks(job.id, TaskSelection(limit=1000, **selection))
    assert page is not None
    views, total = page
    assert total == len(views)
    return [task["__task"]["waiting"] for task in msgspec.json.decode(msgspec.json.encode(views))]


def devices(count: int) -> list[tuple[str, str]]:
    return [(f"d{n}", "/r") for n in range(count)]


async def test_every_queued_task_shows_its_jobs_window_without_a_write_per_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_engine() as (engine, publisher):
        job = await engine.submit(request(devices(5), rollout={"maxInFlight": 2}))
        await trio.testing.wait_all_tasks_blocked()
        assert len(publisher.published) == 2
        assert await shown_waiting(engine, job) == [None, None, *["rollout-window"] * 3]
        assert len(await shown_waiting(engine, job, waiting="rollout-window")) == 3
        # Only the task the feeder holds has a reason of its own; the others' is the job's.
        assert [task.waiting for task in job.record.tasks[3:]] == [None, None]

        answer(engine, publisher.published[0][1])
        await trio.testing.wait_all_tasks_blocked()
        assert len(publisher.published) == 3
        assert await shown_waiting(engine, job) == [None, None, None, *["rollout-window"] * 2]
        for _, sent in publisher.published[1:]:
            answer(engine, sent)
        await trio.testing.wait_all_tasks_blocked()
        for _, sent in publisher.published[3:]:
            answer(engine, sent)
        await job.ended.wait()
        assert await shown_waiting(engine, job) == [None] * 5


async def test_every_queued_task_shows_its_jobs_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_engine() as (engine, publisher):
        job = await engine.submit(request(devices(4), rollout={"maxPerMinute": 60}))
        await trio.testing.wait_all_tasks_blocked()
        assert len(publisher.published) == 1
        assert await shown_waiting(engine, job) == [None, *["rollout-rate"] * 3]
        await trio.sleep(1.5)  # one send a second
        assert len(publisher.published) == 2
        assert await shown_waiting(engine, job) == [None, None, *["rollout-rate"] * 2]
        assert len(await shown_waiting(engine, job, waiting="rollout-rate")) == 2


async def test_a_task_waiting_for_the_fleet_budget_says_so_until_it_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_engine(max_in_flight=2) as (engine, publisher):
        job = await engine.submit(request(devices(4)))
        await trio.testing.wait_all_tasks_blocked()
        assert len(publisher.published) == 2
        # Which two went first is trio's scheduling: the two others wait for the budget.
        sent = {task.id for task in job.record.tasks if task.status == "sent"}
        expected = [None if task.id in sent else "fleet-budget" for task in job.record.tasks]
        assert await shown_waiting(engine, job) == expected
        assert len(await shown_waiting(engine, job, waiting="fleet-budget")) == 2

        answer(engine, publisher.published[0][1])
        await trio.testing.wait_all_tasks_blocked()
        assert len(publisher.published) == 3
        waiting = [task for task in job.record.tasks if task.status == "pending"]
        assert len(waiting) == 1
        assert await shown_waiting(engine, job, status="pending") == ["fleet-budget"]
        assert await shown_waiting(engine, job, status="sent") == [None, None]
