"""Answer latencies per device (``latencyP50`` of ``GET /devices``): the bounded window, and
what the fleet records on trio's virtual clock (publication to final answer, once per task)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from actors import open_mailbox
from pm.answer_latency import WINDOW, AnswerLatencies
from pm.devices import Fleet
from pm.protocol import PROGRESS_CODE, TopicTemplates
from pm.state import TaskRecord
from pm.task_machine import TaskSent, TaskSettled
from tests.fakes import RecordingPublisher

TOPICS = TopicTemplates("/remote/{device}", "/remote/{device}/response")


def test_the_median_is_over_the_last_window_of_answers_only() -> None:
    latencies = AnswerLatencies()
    assert latencies.p50("a") is None
    latencies.record("a", 3.0)
    assert latencies.p50("a") == 3.0
    latencies.record("a", 1.0)
    assert latencies.p50("a") == 2.0  # two values: their mean
    # A slow past falls out of the window: the median is the device now.
    for _ in range(WINDOW):
        latencies.record("a", 0.25)
    assert latencies.p50("a") == 0.25
    assert latencies.p50("b") is None and len(latencies) == 1


def _task(task_id: int, device: str, timeout: float = 30.0) -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        job_id=1,
        entry=0,
        device=device,
        method="get",
        resource="/r",
        data=None,
        tunnel=TOPICS.response_topic(device),
        timeout=timeout,
        created_at=0.0,
    )


def _answer(fleet: Fleet, device: str, task_id: int, code: int = 200) -> None:
    payload = json.dumps({"id": task_id, "code": code, "data": {}}).encode()
    fleet.on_answer(TOPICS.response_topic(device), payload)


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    async with trio.open_nursery() as nursery:
        yield Fleet(nursery, RecordingPublisher(), TOPICS, mailbox_size=8, idle_timeout=60.0)
        nursery.cancel_scope.cancel()


async def test_the_fleet_records_publication_to_final_answer_once_per_answered_task(
    fleet: Fleet, autojump_clock: trio.testing.MockClock
) -> None:
    reports, inbox = open_mailbox("job:1", 64)
    await fleet.dispatch(_task(1, "a"), reports)
    assert await inbox.receive() == TaskSent(1)
    await trio.sleep(1.0)
    _answer(fleet, "a", 1, PROGRESS_CODE)  # interim: not the answer
    await trio.sleep(1.5)
    _answer(fleet, "a", 1)
    _answer(fleet, "a", 1)  # a repeat of the same answer, before the actor took the first
    assert await inbox.receive() == TaskSettled(1, "resolved", {}, code=200)
    assert fleet.latencies.p50("a") == 2.5

    await fleet.dispatch(_task(2, "a"), reports)
    assert await inbox.receive() == TaskSent(2)
    await trio.sleep(0.5)
    _answer(fleet, "a", 2, code=500)  # an error is a final answer too
    assert (await inbox.receive()).status == "error"  # type: ignore[attr-defined]
    assert fleet.latencies.p50("a") == 1.5

    # A task that times out has no answer latency.
    await fleet.dispatch(_task(3, "a", timeout=9.0), reports)
    assert await inbox.receive() == TaskSent(3)
    assert await inbox.receive() == TaskSettled(3, "timeout", None)
    assert fleet.latencies.p50("a") == 1.5
