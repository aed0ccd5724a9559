"""Dispatch logic on trio's virtual clock, with a recording publisher in place of MQTT.

The same behaviours are proven through the real broker in tests/integration/; here they are
checked for exact timing (``autojump_clock``) and for the interleavings that are hard to
force over sockets. pytest-trio takes the clock from the test's own arguments, so every test
names ``autojump_clock`` itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from pm.config import Config, StoreConfig, TasksConfig
from pm.engine import Engine, open_engine
from pm.jobs import Job
from pm.presence import Presence
from pm.store import Store
from tests.fakes import RecordingPublisher, answer
from tests.job_api import entry, job_request
from tests.stores import running_store


@pytest.fixture
async def running() -> AsyncIterator[tuple[Engine, RecordingPublisher]]:
    publisher = RecordingPublisher()
    config = Config(
        tasks=TasksConfig(default_timeout=30.0, device_idle_retire=5.0),
        store=StoreConfig(path=":memory:"),
    )
    async with open_engine(config, publisher) as engine:
        yield engine, publisher


async def test_expansion_order_and_resolution(
    running: tuple[Engine, RecordingPublisher], autojump_clock: trio.testing.MockClock
) -> None:
    engine, publisher = running
    publisher.on_publish = lambda topic, request: answer(engine, request, data={"ok": 1})
    job = await engine.submit(
        job_request(entry(["a", "b"], "/one"), entry("000C291CE801", "/two", data={"x": 1}))
    )
    await job.ended.wait()
    view = job.record.view("tasks")
    assert [(t.destination, t.resource) for t in view.collection] == [  # type: ignore[union-attr]
        ("a", "/one"),
        ("b", "/one"),
        ("00:0c:29:1c:e8:01", "/two"),
    ]
    assert view.status == "resolved"
    assert (view.total_count, view.finish_count, view.error_count, view.done_count) == (3, 3, 0, 3)
    assert view.progress == 100
    # Each device's requests keep their order; across devices, those handed out in one
    # chunk leave in the order trio runs their actors.
    assert sorted(request["id"] for _, request in publisher.published) == [1, 2, 3]
    assert publisher.requests_to("/remote/00:0c:29:1c:e8:01") == [
        {
            "id": 3,
            "method": "get",
            "resource": "/two",
            "data": {"x": 1},
            "tunnel": "/remote/00:0c:29:1c:e8:01/response",
        }
    ]


async def test_one_in_flight_per_device_fifo_across_jobs(
    running: tuple[Engine, RecordingPublisher],
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine, publisher = running
    first = await engine.submit(job_request(entry("dev", "/a"), entry("dev", "/b")))
    await trio.testing.wait_all_tasks_blocked()  # the first job's tasks are queued first
    second = await engine.submit(job_request(entry("dev", "/c")))
    await trio.testing.wait_all_tasks_blocked()
    for expected in ("/a", "/b", "/c"):
        # Exactly one request outstanding: the next leaves only after this one is answered.
        assert [r["resource"] for _, r in publisher.published][-1] == expected
        outstanding = len(publisher.published)
        await trio.sleep(1)
        assert len(publisher.published) == outstanding
        answer(engine, publisher.published[-1][1])
        await trio.testing.wait_all_tasks_blocked()
    assert first.record.status == second.record.status == "resolved"


async def test_task_timeout_counts_from_publication(
    running: tuple[Engine, RecordingPublisher],
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine, publisher = running
    start = trio.current_time()
    job = await engine.submit(job_request(entry("dev", "/slow", timeout=10), entry("dev", "/next")))
    await trio.testing.wait_all_tasks_blocked()
    await trio.sleep(9.5)
    answer(engine, publisher.published[0][1], code=206, data={"progress": 40})
    await trio.testing.wait_all_tasks_blocked()
    slow = job.record.tasks[0]
    assert (slow.status, slow.progress, job.record.progress) == ("sent", 40, 20)
    await trio.sleep(1)
    assert slow.status == "timeout" and slow.result is None
    # The second task waited 10 s in the queue; its own 30 s start at its publication.
    assert publisher.published[1][1]["resource"] == "/next"
    await job.ended.wait()
    assert trio.current_time() - start == pytest.approx(40)
    assert (job.record.status, job.record.error_count) == ("resolved", 2)


async def test_job_timeout_ends_unsettled_tasks(
    running: tuple[Engine, RecordingPublisher],
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine, publisher = running
    start = trio.current_time()
    job = await engine.submit(job_request(entry(["a", "b"]), entry("a"), timeout=5))
    await trio.testing.wait_all_tasks_blocked()
    answer(engine, publisher.requests_to("/remote/a")[0])  # a's second task goes out
    await job.ended.wait()
    assert trio.current_time() - start == pytest.approx(5)
    assert job.record.status == "timeout"
    assert [t.status for t in job.record.tasks] == ["resolved", "timeout", "timeout"]
    assert (job.record.finish_count, job.record.error_count) == (1, 2)
    # A late answer for an abandoned task is dropped and counted, not applied.
    answer(engine, publisher.requests_to("/remote/b")[0])
    assert engine.fleet.dropped["unexpected_id"] == 1
    assert job.record.tasks[1].status == "timeout"


async def test_cancel_removes_queued_tasks(
    running: tuple[Engine, RecordingPublisher], autojump_clock: trio.testing.MockClock
) -> None:
    engine, publisher = running
    blocker = await engine.submit(job_request(entry("dev", "/first")))
    await trio.testing.wait_all_tasks_blocked()
    job = await engine.submit(job_request(entry("dev", "/queued"), entry("dev", "/queued-too")))
    await trio.testing.wait_all_tasks_blocked()
    view = await engine.delete(job.id)
    assert view is not None and view.status == "cancelled"
    assert [t.status for t in job.record.tasks] == ["cancelled", "cancelled"]
    assert engine.get(job.id) is None
    answer(engine, publisher.published[0][1])
    await blocker.ended.wait()
    await trio.sleep(1)
    assert [r["resource"] for _, r in publisher.published] == ["/first"]


async def test_cancel_abandons_in_flight(
    running: tuple[Engine, RecordingPublisher], autojump_clock: trio.testing.MockClock
) -> None:
    engine, publisher = running
    job = await engine.submit(job_request(entry("dev", "/in-flight")))
    await trio.testing.wait_all_tasks_blocked()
    after = await engine.submit(job_request(entry("dev", "/after")))
    await trio.testing.wait_all_tasks_blocked()
    await engine.delete(job.id)
    await trio.testing.wait_all_tasks_blocked()
    assert job.record.tasks[0].status == "cancelled"
    # The device moved on at once instead of waiting out the abandoned task.
    assert publisher.published[-1][1]["resource"] == "/after"
    answer(engine, publisher.published[0][1])
    assert engine.fleet.dropped["unexpected_id"] == 1
    answer(engine, publisher.published[-1][1])
    await after.ended.wait()


async def test_error_answers_and_garbage(
    running: tuple[Engine, RecordingPublisher], autojump_clock: trio.testing.MockClock
) -> None:
    engine, publisher = running
    job = await engine.submit(job_request(entry(["a", "b"], "/r")))
    await trio.testing.wait_all_tasks_blocked()
    [request_a] = publisher.requests_to("/remote/a")
    [request_b] = publisher.requests_to("/remote/b")
    for payload in (b"not json", b"{}", b'{"id": "1", "code": 200}', b"[1,2]"):
        engine.on_mqtt_message("/remote/a/response", payload)
    engine.on_mqtt_message("/elsewhere/a", b"{}")
    # b's task id arriving on a's topic: another device's task.
    engine.on_mqtt_message(
        "/remote/a/response", json.dumps({"id": request_b["id"], "code": 200}).encode()
    )
    assert dict(engine.fleet.dropped) == {"malformed": 4, "foreign_topic": 1, "unexpected_id": 1}
    answer(engine, request_a, code=500, data={"message": "boom"})
    answer(engine, request_b, code=204)
    await job.ended.wait()
    a, b = job.record.tasks
    assert (a.status, a.result) == (
        "error",
        {"code": 500, "resource": None, "data": {"message": "boom"}},
    )
    assert (b.status, b.result) == ("resolved", {})
    assert (job.record.status, job.record.finish_count, job.record.error_count) == (
        "resolved",
        1,
        1,
    )
    # A second answer to the task a device settled last: dropped, as a duplicate.
    answer(engine, request_a)
    assert engine.fleet.dropped["duplicate_answer"] == 1
    assert engine.fleet.dropped["unexpected_id"] == 1


async def test_idle_device_actors_retire(
    running: tuple[Engine, RecordingPublisher], autojump_clock: trio.testing.MockClock
) -> None:
    engine, publisher = running
    publisher.on_publish = lambda topic, request: answer(engine, request)
    job = await engine.submit(job_request(entry([f"d{i}" for i in range(50)])))
    await job.ended.wait()
    assert engine.fleet.live_actors == 50
    await trio.sleep(6)
    assert engine.fleet.live_actors == 0
    again = await engine.submit(job_request(entry("d1")))
    await again.ended.wait()
    assert again.record.status == "resolved"


async def test_a_reconnect_resends_in_flight_requests_once_to_devices_not_offline(
    running: tuple[Engine, RecordingPublisher],
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine, publisher = running
    publisher.connected = False
    job = await engine.submit(job_request(entry(["a", "b"])))
    await trio.testing.wait_all_tasks_blocked()
    assert publisher.published == []
    a, b = job.record.tasks
    assert (a.status, a.sends, b.status, b.sends) == ("sent", 0, "sent", 0)  # none left
    engine.presence.update("b", Presence.OFFLINE, 0.0)
    publisher.connected = True
    engine.on_mqtt_connect(2)
    await trio.testing.wait_all_tasks_blocked()
    # a's copy goes out now; offline b's when b returns.
    assert [topic for topic, _ in publisher.published] == ["/remote/a"]
    engine.presence.update("b", Presence.ONLINE, 1.0)
    await trio.testing.wait_all_tasks_blocked()
    assert [topic for topic, _ in publisher.published] == ["/remote/a", "/remote/b"]
    assert publisher.retained == {}  # a copy goes to a subscribed device: nothing retained
    for _, request in list(publisher.published):
        answer(engine, request)
    await job.ended.wait()
    assert job.record.status == "resolved"
    assert [t.sends for t in job.record.tasks] == [1, 1]


async def test_failing_device_actor_errors_only_its_tasks(
    running: tuple[Engine, RecordingPublisher],
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine, publisher = running

    def explode(topic: str, request: dict[str, Any]) -> None:
        if topic == "/remote/bad":
            raise RuntimeError("injected bug")
        answer(engine, request)

    publisher.on_publish = explode
    job = await engine.submit(job_request(entry(["bad", "good"]), entry("bad", "/queued")))
    other = await engine.submit(job_request(entry("good", "/other")))
    await job.ended.wait()
    await other.ended.wait()
    statuses = [(t.device, t.status) for t in job.record.tasks]
    assert statuses == [("bad", "error"), ("good", "resolved"), ("bad", "error")]
    assert "injected bug" in job.record.tasks[0].result["error"]
    assert other.record.status == "resolved" and other.record.error_count == 0


async def test_finished_jobs_held_in_memory_are_bounded_by_tasks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    publisher = RecordingPublisher()
    config = Config(tasks=TasksConfig(max_finished_tasks=10), store=StoreConfig(path=":memory:"))
    async with open_engine(config, publisher) as engine:
        publisher.on_publish = lambda topic, request: answer(engine, request)
        ids = []
        for size in (4, 4, 4, 1):
            job = await engine.submit(job_request(entry([f"d{i}" for i in range(size)])))
            await job.ended.wait()
            ids.append(job.id)
        # 13 finished tasks > 10: the oldest job (4 tasks) is forgotten, 9 stay in memory.
        assert [engine.get(job_id) is not None for job_id in ids] == [False, True, True, True]
        # The store still serves the forgotten one, whole.
        stored = await engine.find(ids[0])
        assert stored is not None
        assert stored.record.status == "resolved"
        assert len(stored.record.tasks) == 4


# -- restarts, on the virtual clock ----------------------------------------------------------
#
# The engine reads wall time only through the clock it is given: here one that follows trio's
# virtual clock, so "the gateway was down for 40 s" is a virtual sleep. Both engines share one
# in-memory store (inline, no worker thread: a thread would let the virtual clock jump).

EPOCH = 1_800_000_000.0
GUARD = 3600.0  # virtual seconds: far beyond every timeout below


def virtual_wall_clock() -> float:
    return EPOCH + trio.current_time()


def restartable(
    store: Store, publisher: RecordingPublisher, store_config: StoreConfig | None = None
) -> Any:
    """An engine on ``store`` with the virtual wall clock; leaving it is a shutdown."""
    settings = Config(
        tasks=TasksConfig(default_timeout=30.0, device_idle_retire=5.0),
        store=store_config or StoreConfig(path=":memory:"),
    )
    return open_engine(settings, publisher, store, wall_clock=virtual_wall_clock)


async def test_a_job_whose_timeout_passed_while_down_ends_timeout_at_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                short = await engine.submit(job_request(entry(["a"]), entry("a"), timeout=30))
                long = await engine.submit(job_request(entry("b", timeout=1000), timeout=600))
                await trio.testing.wait_all_tasks_blocked()
                assert len(publisher.published) == 2
            await trio.sleep(40)  # down for longer than the short job's timeout
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                # Decided before the engine is handed out, without dispatching anything of it.
                assert engine.get(short.id) is None
                stored = await engine.find(short.id)
                assert stored is not None and stored.record.status == "timeout"
                assert [t.status for t in stored.record.tasks] == ["timeout", "timeout"]
                assert stored.record.finish_at == EPOCH + 40
                resumed = engine.get(long.id)
                assert resumed is not None and not resumed.final
                await trio.testing.wait_all_tasks_blocked()
                # b's request, in flight at the stop, goes out again once b is seen.
                assert publisher.published == []
                engine.presence.update("b", Presence.ONLINE, virtual_wall_clock())
                await trio.testing.wait_all_tasks_blocked()
                assert [topic for topic, _ in publisher.published] == ["/remote/b"]


async def test_a_job_timeout_keeps_counting_from_created_at(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            created = trio.current_time()
            async with restartable(store, RecordingPublisher()) as engine:
                # A task timeout beyond the job's: the job timeout is what ends it.
                job = await engine.submit(job_request(entry("a", timeout=1000), timeout=60))
                await trio.sleep(10)
            await trio.sleep(20)
            async with restartable(store, RecordingPublisher()) as engine:
                resumed = engine.get(job.id)
                assert resumed is not None and not resumed.final
                await resumed.ended.wait()
                # 60 s after it was created, not 60 s after the restart.
                assert trio.current_time() - created == 60
                assert resumed.record.status == "timeout"
                assert resumed.record.finish_at == resumed.record.created_at + 60


async def test_retention_deletes_old_finished_jobs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            retention = StoreConfig(path=":memory:", retention=100.0, retention_interval=10.0)
            async with restartable(store, publisher, retention) as engine:
                publisher.on_publish = lambda topic, request: (
                    answer(engine, request) if request["resource"] == "/done" else None
                )
                finished = await engine.submit(job_request(entry("a", "/done")))
                running = await engine.submit(job_request(entry("b", "/never", timeout=1000)))
                await finished.ended.wait()
                assert (await engine.list())[1] == 2
                await trio.sleep(95)
                assert engine.get(finished.id) is finished  # not old enough yet
                await trio.sleep(20)
                # Gone from memory and from the store; the unfinished job is untouched.
                assert engine.get(finished.id) is None
                assert await engine.find(finished.id) is None
                views, total = await engine.list()
                assert (total, [v.id for v in views]) == (1, [running.id])
                assert engine.get(running.id) is running and not running.final


async def test_a_stop_sends_nothing_new_and_stores_the_answers_that_arrive_within_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                job = await engine.submit(
                    job_request(entry(["a", "b", "c"], "/1"), entry(["a", "b"], "/2"))
                )
                await trio.testing.wait_all_tasks_blocked()
                first = {topic: request for topic, request in publisher.published}
                assert sorted(first) == ["/remote/a", "/remote/b", "/remote/c"]
                answer(engine, first["/remote/c"])  # before the stop: c has nothing queued
                await trio.testing.wait_all_tasks_blocked()
                engine.stop_dispatching()
                answer(engine, first["/remote/a"])  # on its way when the stop began
                await trio.testing.wait_all_tasks_blocked()
                # a's next task stays unsent; b never answers.
                assert len(publisher.published) == 3
                start = trio.current_time()
                assert await engine.settle(grace=2.0) == 1
                assert trio.current_time() - start == 2.0
                assert len(publisher.published) == 3
                statuses = [(t.device, t.resource, t.status) for t in job.record.tasks]
                assert statuses == [
                    ("a", "/1", "resolved"),
                    ("b", "/1", "sent"),
                    ("c", "/1", "resolved"),
                    ("a", "/2", "pending"),
                    ("b", "/2", "pending"),
                ]
            # What settled was stored: the next start re-sends only b's unanswered request
            # (once b is seen), and sends a's pending one.
            publisher = RecordingPublisher()
            async with restartable(store, publisher) as engine:
                await trio.testing.wait_all_tasks_blocked()
                assert [(t, r["resource"]) for t, r in publisher.published] == [("/remote/a", "/2")]
                engine.presence.update("b", Presence.ONLINE, virtual_wall_clock())
                await trio.testing.wait_all_tasks_blocked()
                assert sorted((t, r["resource"]) for t, r in publisher.published) == [
                    ("/remote/a", "/2"),
                    ("/remote/b", "/1"),
                ]


async def test_a_stop_with_nothing_in_flight_settles_at_once(
    running: tuple[Engine, RecordingPublisher], autojump_clock: trio.testing.MockClock
) -> None:
    engine, _ = running
    engine.stop_dispatching()
    start = trio.current_time()
    assert await engine.settle(grace=5.0) == 0
    assert trio.current_time() == start


async def test_a_request_to_a_device_that_stays_connected_goes_out_once(
    running: tuple[Engine, RecordingPublisher], autojump_clock: trio.testing.MockClock
) -> None:
    # Re-sends follow presence, never a timer (docs/protocol.md): a device that stays online
    # and does not answer gets one copy until its task times out.
    engine, publisher = running
    engine.presence.update("dev", Presence.ONLINE, 0.0)
    job = await engine.submit(job_request(entry("dev")))
    await job.ended.wait()
    assert job.record.tasks[0].status == "timeout"
    assert len(publisher.published) == 1 and publisher.retained == {}
    assert job.record.tasks[0].sends == 1


async def test_a_failing_job_actor_ends_only_its_job_cancelled(
    running: tuple[Engine, RecordingPublisher],
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, publisher = running
    handle = Job._handle
    doomed_ids: set[int] = set()

    def buggy_handle(self: Job, message: Any) -> None:
        if self.id in doomed_ids:
            raise RuntimeError("injected bug")
        handle(self, message)

    monkeypatch.setattr(Job, "_handle", buggy_handle)
    doomed = await engine.submit(job_request(entry(["a", "b"])))
    doomed_ids.add(doomed.id)
    other = await engine.submit(job_request(entry("c")))
    await doomed.ended.wait()
    assert doomed.record.status == "cancelled"
    assert [t.status for t in doomed.record.tasks] == ["cancelled", "cancelled"]
    # The policy named the job by its actor's key.
    [line] = [r for r in caplog.records if "its actor failed" in r.getMessage()]
    assert getattr(line, "job_id", None) == doomed.id
    answer(engine, publisher.requests_to("/remote/c")[0])
    await other.ended.wait()
    assert other.record.status == "resolved"
