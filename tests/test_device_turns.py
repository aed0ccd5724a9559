"""Priority and the fleet budget (pm/device_turns.py): the budget's order on trio, and through
the engine on the virtual clock (recording publisher, an inline in-memory store: a store
thread would let the virtual clock jump): a high-priority task goes next on its
device, never pre-empting the one in flight, and first when the fleet's budget is full."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from pm.config import Config, StoreConfig, TasksConfig
from pm.device_turns import FleetBudget
from pm.engine import Engine, open_engine
from pm.schemas import JobRequest
from tests.fakes import RecordingPublisher, answer
from tests.job_api import entry, job_request
from tests.stores import running_store
from tests.test_engine import virtual_wall_clock


def request(entries: list[tuple[str, str]], **options: Any) -> JobRequest:
    return job_request(*(entry(device, resource) for device, resource in entries), **options)


def engine_config(**tasks: Any) -> Config:
    return Config(
        tasks=TasksConfig(default_timeout=30.0, device_idle_retire=5.0, **tasks),
        store=StoreConfig(path=":memory:"),
    )


async def test_the_budget_hands_freed_slots_to_high_priority_first() -> None:
    with trio.fail_after(5):
        budget = FleetBudget(1)
        order: list[str] = []
        await budget.acquire(high_priority=False)

        async def waiter(name: str, high: bool) -> None:
            await budget.acquire(high)
            order.append(name)

        async with trio.open_nursery() as nursery:
            for name, high in (("normal-1", False), ("high-1", True), ("normal-2", False)):
                nursery.start_soon(waiter, name, high)
                await trio.testing.wait_all_tasks_blocked()
            assert budget.waiting == 3 and budget.in_flight == 1
            for _ in range(3):
                budget.release()
                await trio.testing.wait_all_tasks_blocked()
        assert order == ["high-1", "normal-1", "normal-2"]
        budget.release()
        assert budget.in_flight == 0


async def test_a_cancelled_waiter_gives_its_place_up() -> None:
    with trio.fail_after(5):
        budget = FleetBudget(1)
        await budget.acquire(high_priority=False)
        with trio.move_on_after(0.01):
            await budget.acquire(high_priority=True)
        assert budget.waiting == 0
        budget.release()
        assert budget.in_flight == 0


async def test_a_resized_budget_wakes_whom_it_has_room_for_and_drains_when_smaller() -> None:
    """A clustered gateway's share grows and shrinks with the shards it serves."""
    with trio.fail_after(5):
        budget = FleetBudget(2)
        woken: list[int] = []
        for _ in range(2):
            await budget.acquire(high_priority=False)

        async def waiter(number: int) -> None:
            await budget.acquire(high_priority=False)
            woken.append(number)

        async with trio.open_nursery() as nursery:
            for number in range(3):
                nursery.start_soon(waiter, number)
                await trio.testing.wait_all_tasks_blocked()
            budget.resize(3)  # room for one more
            await trio.testing.wait_all_tasks_blocked()
            assert (woken, budget.in_flight, budget.waiting) == ([0], 3, 2)
            budget.resize(1)  # two over: freed as they end, nothing handed on
            for in_flight in (2, 1):
                budget.release()
                await trio.testing.wait_all_tasks_blocked()
                assert (woken, budget.in_flight) == ([0], in_flight)
            budget.release()  # at the limit: this slot passes on
            await trio.testing.wait_all_tasks_blocked()
            assert (woken, budget.in_flight) == ([0, 1], 1)
            budget.resize(2)
        assert woken == [0, 1, 2] and budget.in_flight == 2


@asynccontextmanager
async def running_engine(**tasks: Any) -> AsyncIterator[tuple[Engine, RecordingPublisher]]:
    """An engine with these ``[tasks]`` settings, a recording publisher, an inline in-memory
    store; the hang guard (virtual seconds) inside the store, whose last commit is real."""
    publisher = RecordingPublisher()
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(3600):
            config = engine_config(**tasks)
            async with open_engine(
                config, publisher, store, wall_clock=virtual_wall_clock
            ) as engine:
                yield engine, publisher


async def test_a_high_priority_task_goes_next_on_its_device_not_behind_a_long_job(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_engine() as (engine, publisher):
        normal = await engine.submit(request([("a", f"/normal/{n}") for n in range(20)]))
        await trio.testing.wait_all_tasks_blocked()
        high = await engine.submit(request([("a", "/urgent")], priority="high"))
        await trio.testing.wait_all_tasks_blocked()
        # The first normal task is in flight: it is never pre-empted.
        assert [r["resource"] for r in publisher.requests_to("/remote/a")] == ["/normal/0"]
        answer(engine, publisher.requests_to("/remote/a")[0])
        await trio.testing.wait_all_tasks_blocked()
        # Next on the device: the high-priority task, ahead of the 19 normal ones queued.
        assert publisher.requests_to("/remote/a")[1]["resource"] == "/urgent"
        while not normal.final:
            answer(engine, publisher.requests_to("/remote/a")[-1])
            await trio.testing.wait_all_tasks_blocked()
        assert high.record.status == "resolved" and normal.record.finish_count == 20


async def test_a_full_fleet_budget_serves_high_priority_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_engine(max_in_flight=2) as (engine, publisher):
        normal = await engine.submit(request([(f"n{i}", "/n") for i in range(6)]))
        await trio.testing.wait_all_tasks_blocked()
        assert len(publisher.published) == 2  # the budget: 2 in flight across the fleet
        high = await engine.submit(request([("h0", "/h"), ("h1", "/h")], priority="high"))
        await trio.testing.wait_all_tasks_blocked()
        assert len(publisher.published) == 2
        answer(engine, publisher.published[0][1])
        await trio.testing.wait_all_tasks_blocked()
        high_topics = {"/remote/h0", "/remote/h1"}
        # The freed slot goes to a high-priority task (which one first is trio's scheduling).
        assert publisher.published[2][0] in high_topics
        answer(engine, publisher.published[1][1])
        await trio.testing.wait_all_tasks_blocked()
        assert {topic for topic, _ in publisher.published[2:4]} == high_topics
        assert engine.fleet.budget.in_flight == 2
        for index in range(2, 8):
            answer(engine, publisher.published[index][1])
            await trio.testing.wait_all_tasks_blocked()
        assert high.final and normal.final and engine.fleet.budget.in_flight == 0
