"""Device actors on trio's virtual clock: the job-to-device contract, seen from the device side.

A job is stood in for by a bare mailbox (what a device actor is given), MQTT by a recording
publisher; the same paths through the real broker are in tests/integration/.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors import ActorRef, open_mailbox
from pm.devices import Fleet
from pm.presence import Presence, PresenceBook
from pm.protocol import TopicTemplates
from pm.state import TaskRecord
from pm.task_machine import TaskReport, TaskSent, TaskSettled
from tests.fakes import RecordingPublisher

PM_DIR = Path(__file__).resolve().parent.parent / "pm"
TOPICS = TopicTemplates("/remote/{device}", "/remote/{device}/response")


def module_file(name: str) -> Path | None:
    """The source of ``pm.<name>`` (a module or a package), if there is one."""
    for path in (PM_DIR / f"{name.replace('.', '/')}.py", PM_DIR / name.replace(".", "/")):
        if path.is_file():
            return path
        if (path / "__init__.py").is_file():
            return path / "__init__.py"
    return None


def pm_imports(name: str) -> set[str]:
    """The ``pm`` modules ``pm.<name>`` imports anywhere in its source, ``TYPE_CHECKING``
    blocks and function bodies included (names relative to ``pm``)."""
    path = module_file(name)
    assert path is not None, name
    parts = name.split(".")
    package = parts if path.name == "__init__.py" else parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found.update(".".join([*base, alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pm."):
            found.add(node.module.removeprefix("pm."))  # type: ignore[union-attr]
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("pm.") for a in node.names if a.name.startswith("pm."))
    return {module for module in found if module_file(module) is not None}


def reachable(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for imported in pm_imports(todo.pop()) - seen:
            seen.add(imported)
            todo.append(imported)
    return seen


def test_jobs_and_devices_never_import_each_other_not_even_for_type_checking() -> None:
    assert {"state", "task_machine"} <= reachable("jobs")  # the scan follows real imports
    assert "devices" not in reachable("jobs")
    assert "jobs" not in reachable("devices")


@pytest.mark.parametrize(
    "module",
    ["pm.devices", "pm.jobs", "pm.task_machine", "pm.in_flight", "pm.engine", "pm.device_waits"],
)
def test_each_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    root = PM_DIR.parent
    completed = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=root,
        env={"PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr


def task(task_id: int, device: str, *, job_id: int = 1, timeout: float = 30.0) -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        job_id=job_id,
        entry=0,
        device=device,
        method="get",
        resource=f"/r{task_id}",
        data=None,
        tunnel=TOPICS.response_topic(device),
        timeout=timeout,
        created_at=0.0,
    )


def answer(fleet: Fleet, device: str, task_id: int, code: int = 200) -> None:
    payload = json.dumps({"id": task_id, "code": code, "data": {"n": task_id}}).encode()
    fleet.on_answer(TOPICS.response_topic(device), payload)


def drain(inbox: trio.MemoryReceiveChannel[TaskReport]) -> list[TaskReport]:
    reports = []
    while True:
        try:
            reports.append(inbox.receive_nowait())
        except trio.WouldBlock:
            return reports


@pytest.fixture
async def fleet() -> AsyncIterator[tuple[Fleet, RecordingPublisher]]:
    publisher = RecordingPublisher()
    async with trio.open_nursery() as nursery:
        yield Fleet(nursery, publisher, TOPICS, mailbox_size=8, idle_timeout=60.0), publisher
        nursery.cancel_scope.cancel()


def job_mailbox(job_id: int) -> tuple[ActorRef[TaskReport], trio.MemoryReceiveChannel[Any]]:
    return open_mailbox(f"job:{job_id}", 64)


async def test_a_task_reports_sent_then_its_final_answer_to_the_jobs_mailbox(
    fleet: tuple[Fleet, RecordingPublisher], autojump_clock: trio.testing.MockClock
) -> None:
    devices, publisher = fleet
    reports, inbox = job_mailbox(1)
    await devices.dispatch(task(1, "a"), reports)
    await trio.testing.wait_all_tasks_blocked()
    assert [r["id"] for r in publisher.requests_to("/remote/a")] == [1]
    assert drain(inbox) == [TaskSent(1)]
    answer(devices, "a", 1)
    await trio.testing.wait_all_tasks_blocked()
    assert drain(inbox) == [TaskSettled(1, "resolved", {"n": 1}, 200)]
    assert devices.in_flight == 0 and devices.answered == 1


async def test_a_second_answer_queued_behind_the_first_is_dropped_not_given_to_the_next_task(
    fleet: tuple[Fleet, RecordingPublisher], autojump_clock: trio.testing.MockClock
) -> None:
    # Both answers reach the actor's channel before it runs: the first settles task 1, the
    # second is left there when the task ends, counted as a duplicate and drained, so the
    # device's next task starts on an empty channel.
    devices, publisher = fleet
    reports, inbox = job_mailbox(1)
    await devices.dispatch(task(1, "a"), reports)
    await trio.testing.wait_all_tasks_blocked()
    answer(devices, "a", 1)
    answer(devices, "a", 1, code=500)
    await trio.testing.wait_all_tasks_blocked()
    assert drain(inbox) == [TaskSent(1), TaskSettled(1, "resolved", {"n": 1}, 200)]
    assert devices.dropped["duplicate_answer"] == 1
    await devices.dispatch(task(2, "a"), reports)
    await trio.testing.wait_all_tasks_blocked()
    assert [r["id"] for r in publisher.requests_to("/remote/a")] == [1, 2]
    answer(devices, "a", 2)
    await trio.testing.wait_all_tasks_blocked()
    assert drain(inbox) == [TaskSent(2), TaskSettled(2, "resolved", {"n": 2}, 200)]
    assert devices.dropped["duplicate_answer"] == 1


async def test_a_task_without_answer_reports_timeout_at_its_deadline(
    fleet: tuple[Fleet, RecordingPublisher], autojump_clock: trio.testing.MockClock
) -> None:
    devices, _ = fleet
    reports, inbox = job_mailbox(1)
    start = trio.current_time()
    await devices.dispatch(task(1, "a", timeout=7.0), reports)
    assert await inbox.receive() == TaskSent(1)
    assert await inbox.receive() == TaskSettled(1, "timeout", None)
    assert trio.current_time() - start == 7.0


async def test_abandon_ends_only_that_jobs_tasks_and_their_devices_move_on(
    fleet: tuple[Fleet, RecordingPublisher], autojump_clock: trio.testing.MockClock
) -> None:
    devices, publisher = fleet
    first, first_inbox = job_mailbox(1)
    second, second_inbox = job_mailbox(2)
    await devices.dispatch(task(1, "a", job_id=1), first)
    await devices.dispatch(task(2, "b", job_id=1), first)
    await devices.dispatch(task(3, "c", job_id=2), second)
    await devices.dispatch(task(4, "a", job_id=2), second)  # queued behind job 1's task
    await trio.testing.wait_all_tasks_blocked()
    assert devices.abandon(1) == 2
    assert devices.abandon(1) == 0  # already abandoned: nothing to count twice
    await trio.testing.wait_all_tasks_blocked()
    # Device a moved on at once; the job, not the device, says what its tasks became.
    assert [r["id"] for r in publisher.requests_to("/remote/a")] == [1, 4]
    assert sorted(drain(first_inbox), key=lambda r: r.task_id) == [TaskSent(1), TaskSent(2)]
    answer(devices, "a", 1)
    assert devices.dropped["unexpected_id"] == 1
    # Job 2's task in flight on c was not touched.
    answer(devices, "c", 3)
    answer(devices, "a", 4)
    await trio.testing.wait_all_tasks_blocked()
    assert [type(r).__name__ for r in drain(second_inbox)] == [
        "TaskSent",
        "TaskSent",
        "TaskSettled",
        "TaskSettled",
    ]


async def test_a_failing_device_actor_errors_its_tasks_found_by_its_key(
    fleet: tuple[Fleet, RecordingPublisher], autojump_clock: trio.testing.MockClock
) -> None:
    devices, publisher = fleet
    reports, inbox = job_mailbox(1)
    device = "site:7:a"  # colons: the device is found by the actor's key, not its name

    def explode(topic: str, request: dict[str, Any]) -> None:
        if topic == f"/remote/{device}":
            raise RuntimeError("injected bug")

    publisher.on_publish = explode
    await devices.dispatch(task(1, device), reports)
    await devices.dispatch(task(2, device), reports)
    await trio.testing.wait_all_tasks_blocked()
    reason = {"error": "device actor failed: RuntimeError('injected bug')"}
    assert sorted(drain(inbox), key=lambda r: r.task_id) == [
        TaskSettled(1, "error", reason),
        TaskSettled(2, "error", reason),
    ]
    assert devices.live_actors == 0


async def test_a_task_final_before_its_turn_never_reaches_the_device(
    fleet: tuple[Fleet, RecordingPublisher], autojump_clock: trio.testing.MockClock
) -> None:
    devices, publisher = fleet
    reports, inbox = job_mailbox(1)
    cancelled = task(1, "a")
    cancelled.status = "cancelled"
    await devices.dispatch(cancelled, reports)
    await trio.testing.wait_all_tasks_blocked()
    assert publisher.published == [] and drain(inbox) == []


class CountingPresence(PresenceBook):
    """A presence book that counts its lookups (the per-task cost of presence)."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def presence(self, device: str) -> Presence:
        self.lookups += 1
        return super().presence(device)


async def test_a_task_to_an_idle_online_device_costs_one_presence_lookup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    publisher = RecordingPublisher()
    book = CountingPresence()
    async with trio.open_nursery() as nursery:
        devices = Fleet(
            nursery, publisher, TOPICS, mailbox_size=8, idle_timeout=60.0, presence=book
        )
        reports, inbox = job_mailbox(1)
        for task_id in range(1, 51):
            device = f"d{task_id}"
            book.update(device, Presence.ONLINE, 0.0)
            assert devices.waiting_reason(device) is None  # what a job's feeder asks first
            await devices.dispatch(task(task_id, device), reports)
        await trio.testing.wait_all_tasks_blocked()
        assert len(publisher.published) == 50
        assert book.lookups == 50
        assert sorted(drain(inbox), key=lambda r: r.task_id) == [TaskSent(i) for i in range(1, 51)]
        nursery.cancel_scope.cancel()
