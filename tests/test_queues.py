"""Queues that never wedge, on trio's virtual clock: presence, ``waiting``, ``expiresIn``.

Presence is driven by calling the engine's :class:`~pm.presence.PresenceBook` directly; MQTT
is a recording publisher; the wall clock follows trio's virtual one, so an ``expiresAt`` is
an exact virtual instant. The same acceptance scenario through the real broker is in
tests/integration/test_queues.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from pm.config import Config, StoreConfig, TasksConfig
from pm.engine import Engine, open_engine
from pm.presence import Presence
from pm.state import iso_timestamp
from pm.store import Store
from tests.fakes import RecordingPublisher, answer
from tests.job_api import entry, job_request
from tests.stores import running_store
from tests.test_engine import EPOCH, virtual_wall_clock

GUARD = 3600.0  # virtual seconds: far beyond every timeout below


@asynccontextmanager
async def engine_on(
    store: Store, publisher: RecordingPublisher, **tasks: Any
) -> AsyncIterator[Engine]:
    settings = Config(
        tasks=TasksConfig(**{"default_timeout": 30.0, "device_idle_retire": 5.0, **tasks}),
        store=StoreConfig(path=":memory:"),
    )
    async with open_engine(settings, publisher, store, wall_clock=virtual_wall_clock) as engine:
        yield engine


@asynccontextmanager
async def running_engine(**tasks: Any) -> AsyncIterator[tuple[Engine, RecordingPublisher]]:
    publisher = RecordingPublisher()
    async with (
        running_store(":memory:", window=0.05) as store,
        engine_on(store, publisher, **tasks) as engine,
    ):
        with trio.fail_after(GUARD):
            yield engine, publisher


def set_presence(engine: Engine, device: str, presence: Presence) -> None:
    engine.presence.update(device, presence, virtual_wall_clock())


def resources(publisher: RecordingPublisher) -> list[str]:
    return [request["resource"] for _, request in publisher.published]


async def test_a_task_for_an_offline_device_waits_and_its_timeout_starts_when_it_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_engine() as (engine, publisher):
        set_presence(engine, "dev", Presence.OFFLINE)
        job = await engine.submit(job_request(entry("dev", "/a", timeout=10)))
        await trio.sleep(500)  # far beyond the task timeout: it has not started
        [task] = job.record.tasks
        assert (task.status, task.waiting) == ("pending", "device-offline")
        assert task.view().task.waiting == "device-offline"
        assert publisher.published == []
        online = trio.current_time()
        set_presence(engine, "dev", Presence.ONLINE)
        await trio.testing.wait_all_tasks_blocked()
        assert resources(publisher) == ["/a"]
        assert (task.status, task.waiting) == ("sent", None)
        await job.ended.wait()
        assert task.status == "timeout"
        assert trio.current_time() - online == 10


async def test_a_task_behind_another_on_its_device_says_device_busy_until_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_engine() as (engine, publisher):
        first = await engine.submit(job_request(entry("dev", "/first")))
        await trio.testing.wait_all_tasks_blocked()
        second = await engine.submit(job_request(entry("dev", "/second")))
        await trio.testing.wait_all_tasks_blocked()
        [queued] = second.record.tasks
        assert (queued.status, queued.waiting) == ("pending", "device-busy")
        assert first.record.tasks[0].waiting is None
        assert (second.record.pending_count, first.record.sent_count) == (1, 1)
        answer(engine, publisher.published[0][1])
        await trio.testing.wait_all_tasks_blocked()
        assert (queued.status, queued.waiting) == ("sent", None)
        assert resources(publisher) == ["/first", "/second"]


async def test_offline_device_and_expiry_the_acceptance_scenario(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Device offline, job A to it, job B to it and to online devices with a short
    expiresIn: B's other tasks resolve at once, B's task to the offline device ends expired
    at its expiry without reaching it, A's task is sent when the device comes online."""
    async with running_engine() as (engine, publisher):
        publisher.on_publish = lambda topic, request: (
            None if topic == "/remote/off" else answer(engine, request)
        )
        set_presence(engine, "off", Presence.OFFLINE)
        job_a = await engine.submit(job_request(entry("off", "/a")))
        await trio.testing.wait_all_tasks_blocked()
        created = trio.current_time()
        job_b = await engine.submit(job_request(entry(["off", "on1", "on2"], "/b", expiresIn=5)))
        await trio.testing.wait_all_tasks_blocked()
        off_b, on1, on2 = job_b.record.tasks
        assert (on1.status, on2.status) == ("resolved", "resolved")
        assert trio.current_time() == created
        assert (off_b.status, off_b.waiting) == ("pending", "device-offline")
        assert off_b.view().task.expires_at == iso_timestamp(EPOCH + created + 5)
        await job_b.ended.wait()
        assert trio.current_time() - created == 5
        assert off_b.status == "expired"
        assert off_b.result == {
            "error": "expired before it could be sent",
            "waiting": "device-offline",
        }
        view = job_b.record.view()
        assert (view.status, view.finish_count, view.error_count, view.expired_count) == (
            "resolved",
            2,
            1,
            1,
        )
        assert (view.pending_count, view.sent_count) == (0, 0)
        assert "/b" not in [r["resource"] for r in publisher.requests_to("/remote/off")]
        # A's task kept its place and waits; it leaves when the device comes online.
        assert job_a.record.tasks[0].status == "pending"
        await trio.sleep(100)
        set_presence(engine, "off", Presence.ONLINE)
        await trio.testing.wait_all_tasks_blocked()
        assert publisher.requests_to("/remote/off") == [
            {**publisher.requests_to("/remote/off")[0], "resource": "/a"}
        ]
        assert job_a.record.tasks[0].status == "sent"


async def test_a_task_expires_while_its_device_actor_holds_it_offline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_engine() as (engine, publisher):
        set_presence(engine, "dev", Presence.OFFLINE)
        start = trio.current_time()
        job = await engine.submit(job_request(entry("dev", "/x", expiresIn=7)))
        await trio.testing.wait_all_tasks_blocked()
        assert engine.fleet.holds(job.record.tasks[0])  # the device actor's to expire
        await job.ended.wait()
        assert trio.current_time() - start == 7
        assert job.record.tasks[0].status == "expired"
        set_presence(engine, "dev", Presence.ONLINE)
        follow = await engine.submit(job_request(entry("dev", "/y")))
        await trio.testing.wait_all_tasks_blocked()
        assert resources(publisher) == ["/y"]
        assert follow.record.tasks[0].status == "sent"


async def test_a_queued_task_expires_behind_a_busy_device_without_moving_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_engine() as (engine, publisher):
        first = await engine.submit(job_request(entry("dev", "/first")))
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        doomed = await engine.submit(job_request(entry("dev", "/doomed"), expires_in=3))
        third = await engine.submit(job_request(entry("dev", "/third")))
        await doomed.ended.wait()
        assert trio.current_time() - start == 3
        assert doomed.record.tasks[0].result == {
            "error": "expired before it could be sent",
            "waiting": "device-busy",
        }
        assert third.record.tasks[0].waiting == "device-busy"
        answer(engine, publisher.published[0][1])
        await trio.testing.wait_all_tasks_blocked()
        assert resources(publisher) == ["/first", "/third"]
        assert first.record.status == "resolved"


async def test_cancel_and_job_timeout_of_a_parked_task_let_the_next_one_wait_its_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_engine() as (engine, publisher):
        set_presence(engine, "dev", Presence.OFFLINE)
        cancelled = await engine.submit(job_request(entry("dev", "/cancelled")))
        await trio.testing.wait_all_tasks_blocked()
        timed_out = await engine.submit(job_request(entry("dev", "/timed-out"), timeout=20))
        last = await engine.submit(job_request(entry("dev", "/last")))
        await trio.testing.wait_all_tasks_blocked()
        await engine.delete(cancelled.id)
        await timed_out.ended.wait()
        assert timed_out.record.tasks[0].status == "timeout"
        await trio.testing.wait_all_tasks_blocked()
        assert engine.fleet.holds(last.record.tasks[0])
        assert last.record.tasks[0].waiting == "device-offline"
        set_presence(engine, "dev", Presence.ONLINE)
        await trio.testing.wait_all_tasks_blocked()
        assert resources(publisher) == ["/last"]


async def test_expires_in_defaults_from_the_job_then_tasks_config(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_engine(default_expires_in=100.0) as (engine, _):
        set_presence(engine, "dev", Presence.OFFLINE)
        now = virtual_wall_clock()
        job = await engine.submit(
            job_request(entry("dev", "/own", expiresIn=1), entry("dev", "/job"), expires_in=2)
        )
        configured = await engine.submit(job_request(entry("dev", "/configured")))
        assert [t.expires_at for t in job.record.tasks] == [now + 1, now + 2]
        assert configured.record.tasks[0].expires_at == now + 100
    async with running_engine() as (engine, _):
        job = await engine.submit(job_request(entry("dev", "/none")))
        assert job.record.tasks[0].expires_at is None


async def test_after_a_restart_pending_tasks_keep_their_expiry_from_creation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                set_presence(engine, "dev", Presence.OFFLINE)
                created = virtual_wall_clock()
                early = await engine.submit(job_request(entry("dev", "/early"), expires_in=30))
                late = await engine.submit(job_request(entry("dev", "/late"), expires_in=300))
                await trio.sleep(10)
            await trio.sleep(40)  # down past the first expiry, not the second
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                set_presence(engine, "dev", Presence.OFFLINE)
                resumed_early = await engine.find(early.id)
                resumed_late = engine.get(late.id)
                assert resumed_early is not None and resumed_late is not None
                await resumed_early.ended.wait()
                assert resumed_early.record.tasks[0].status == "expired"
                [task] = resumed_late.record.tasks
                assert (task.status, task.expires_at) == ("pending", created + 300)
                await resumed_late.ended.wait()
                assert virtual_wall_clock() == pytest.approx(created + 300)
                assert task.status == "expired"
                assert publisher.published == []


async def test_a_task_sent_before_a_restart_never_expires_and_is_resent_when_its_device_is_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with engine_on(store, publisher, default_timeout=600.0) as engine:
                job = await engine.submit(job_request(entry("dev", "/sent"), expires_in=5))
                await trio.testing.wait_all_tasks_blocked()
                [request] = publisher.requests_to("/remote/dev")
                await trio.sleep(1)
            publisher = RecordingPublisher()
            async with engine_on(store, publisher, default_timeout=600.0) as engine:
                set_presence(engine, "dev", Presence.OFFLINE)
                resumed = engine.get(job.id)
                assert resumed is not None
                await trio.sleep(60)  # far past its expiresAt: it was sent, it does not expire
                assert resumed.record.tasks[0].status == "sent"
                assert publisher.published == []
                set_presence(engine, "dev", Presence.ONLINE)
                await trio.testing.wait_all_tasks_blocked()
                assert [r["id"] for r in publisher.requests_to("/remote/dev")] == [request["id"]]
                answer(engine, request)
                await resumed.ended.wait()
                assert resumed.record.tasks[0].status == "resolved"
