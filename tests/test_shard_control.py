"""A job's part on one shard following the job-wide control and options (pm/shard_control.py,
pm/shard_service.py), without a broker or a database: a pause holds what has not gone out and
a resume sends it, a job-wide stop cancels what is unsent, a part adopted while its job is
paused or stopping starts so, and a part applies its job's retries, priority and schedule as
a single gateway's job does. Time is trio's virtual clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from pm.cluster import ShardLease
from pm.cluster._control import JobWide
from pm.cluster._writes import ClusterWrites
from pm.config import Config
from pm.job_options import JobOptions
from pm.presence import PresenceBook
from pm.protocol import TopicTemplates
from pm.shard_control import FollowJobWide
from pm.shard_service import ShardJob, ShardService, serve_shard
from pm.state import JobRecord
from tests.fakes import RecordingPublisher
from tests.stores import batch, make_job

LEASE = ShardLease(shard=3, epoch=2, expires_at=0.0, owner="gw-a")
GUARD = 600.0  # virtual seconds

Answer = Callable[[dict[str, Any], int], None]


@pytest.fixture
def config() -> Config:
    return msgspec.convert({"tasks": {"default_timeout": 30}}, Config)


@pytest.fixture
async def shard(
    config: Config, nursery: trio.Nursery
) -> tuple[ShardService, RecordingPublisher, Answer]:
    publisher = RecordingPublisher()
    topics = TopicTemplates(config.topics.request, config.topics.response, config.topics.status)
    service: ShardService = await nursery.start(
        serve_shard,
        partial(
            ShardService,
            LEASE,
            config,
            publisher=publisher,
            topics=topics,
            presence=PresenceBook(),
            writes=ClusterWrites("gw-a", 8),
            wall_clock=trio.current_time,
        ),
    )

    def answer(request: dict[str, Any], code: int = 200) -> None:
        request["answered"] = True
        payload = {"id": request["id"], "code": code, "data": {}}
        service.fleet.on_answer(str(request["tunnel"]), json.dumps(payload).encode())

    return service, publisher, answer


def job(job_id: int, first_task: int, devices: list[str], steps: int, **options: Any) -> JobRecord:  # noqa: ANN401
    entries = batch(*[(devices, f"/step/{step}") for step in range(steps)])
    record = make_job(job_id, first_task, entries, created_at=0.0)
    record.options = msgspec.convert(options, JobOptions)
    return record


def unanswered(publisher: RecordingPublisher) -> list[dict[str, Any]]:
    return [request for _, request in publisher.published if "answered" not in request]


async def answer_all(publisher: RecordingPublisher, answer: Answer, code: int = 200) -> int:
    """Answer every request published and not answered yet, once the devices are idle."""
    await trio.testing.wait_all_tasks_blocked()
    pending = unanswered(publisher)
    for request in pending:
        answer(request, code)
    await trio.testing.wait_all_tasks_blocked()
    return len(pending)


async def follow(part: ShardJob, control: JobWide, *, deleted: bool = False) -> None:
    assert part.ref is not None
    await part.ref.tell(FollowJobWide(control, deleted=deleted))
    await trio.testing.wait_all_tasks_blocked()


async def test_a_part_holds_what_is_unsent_while_paused_job_wide_and_sends_it_on_resume(
    shard: tuple[ShardService, RecordingPublisher, Answer],
    autojump_clock: trio.testing.MockClock,
) -> None:
    service, publisher, answer = shard
    record = job(1, 1, ["d0", "d1"], 3)
    with trio.fail_after(GUARD):
        service.adopt(record)
        part = service.jobs[1]
        assert await answer_all(publisher, answer) == 2  # the first step went out
        await follow(part, JobWide(paused=True))
        assert record.status == "paused"
        # The second step was handed to the devices before the pause: it finishes.
        assert await answer_all(publisher, answer) == 2
        await trio.sleep(60)  # a minute of virtual time: nothing more leaves
        assert unanswered(publisher) == [] and len(publisher.published) == 4
        assert {task.waiting for task in record.tasks if task.status == "pending"} == {"job-paused"}
        await follow(part, JobWide())
        assert await answer_all(publisher, answer) == 2  # the third step, from the part
        await part.ended.wait()
    assert (record.status, record.finish_count) == ("resolved", 6)


async def test_a_part_stops_when_its_job_stops_job_wide_and_ends_with_that_status(
    shard: tuple[ShardService, RecordingPublisher, Answer],
    autojump_clock: trio.testing.MockClock,
) -> None:
    service, publisher, answer = shard
    record = job(1, 1, ["d0", "d1"], 4)
    with trio.fail_after(GUARD):
        service.adopt(record)
        part = service.jobs[1]
        await answer_all(publisher, answer)
        await follow(part, JobWide(ending="aborted"))
        assert record.finish_at is None  # two requests in flight finish
        assert await answer_all(publisher, answer) == 2
        await part.ended.wait()
    statuses = [task.status for task in record.tasks]
    assert statuses.count("resolved") == 4 and statuses.count("cancelled") == 4
    assert record.status == "aborted" and len(publisher.published) == 4


async def test_a_part_of_a_deleted_job_ends_at_once(
    shard: tuple[ShardService, RecordingPublisher, Answer],
    autojump_clock: trio.testing.MockClock,
) -> None:
    service, publisher, answer = shard
    record = job(1, 1, ["d0"], 3)
    with trio.fail_after(GUARD):
        service.adopt(record)
        part = service.jobs[1]
        await trio.testing.wait_all_tasks_blocked()
        await follow(part, JobWide(), deleted=True)
        await part.ended.wait()
    assert record.status == "cancelled" and service.fleet.in_flight == 0


@pytest.mark.parametrize("paced", [False, True], ids=["plain", "paced"])
@pytest.mark.parametrize("control", [JobWide(paused=True), JobWide(ending="cancelled")])
async def test_a_part_adopted_while_its_job_is_paused_or_stopping_sends_nothing(
    shard: tuple[ShardService, RecordingPublisher, Answer],
    autojump_clock: trio.testing.MockClock,
    control: JobWide,
    paced: bool,
) -> None:
    """Also a paced part (its own feeder, pm/shard_pacing.py) with a grant for every task."""
    service, publisher, answer = shard
    options = {"rollout": {"maxInFlight": 4}} if paced else {}
    record = job(1, 1, ["d0", "d1"], 2, **options)
    # As read from the job's row (pm/store/_rows.py restore_job).
    record.set_holds(["paused"] if control.paused else [])
    record.ending = control.ending
    with trio.fail_after(GUARD):
        service.adopt(record)
        pacer = service.jobs[1].pacer if 1 in service.jobs else None
        if paced and pacer is not None:
            pacer.grant(4, 4)
        await trio.sleep(60)
    assert publisher.published == []
    if control.paused:
        assert record.status == "paused" and record.finish_at is None
        assert service.jobs[1].followed == control
    else:
        assert record.status == "cancelled"
        assert {task.status for task in record.tasks} == {"cancelled"}


async def test_a_part_retries_a_failed_attempt_after_its_backoff(
    shard: tuple[ShardService, RecordingPublisher, Answer],
    autojump_clock: trio.testing.MockClock,
) -> None:
    service, publisher, answer = shard
    record = job(1, 1, ["d0"], 1, retry={"on": ["error"], "delay": 5, "max": 2})
    with trio.fail_after(GUARD):
        service.adopt(record)
        part = service.jobs[1]
        assert await answer_all(publisher, answer, 503) == 1
        sent_again_after = trio.current_time()
        await trio.sleep(4.9)
        assert len(publisher.published) == 1, "retried before its backoff"
        await poll_published(publisher, 2)
        assert trio.current_time() - sent_again_after == pytest.approx(5, abs=0.1)
        await answer_all(publisher, answer)
        await part.ended.wait()
    (task,) = record.tasks
    assert (task.status, task.attempts) == ("resolved", 2)


async def poll_published(publisher: RecordingPublisher, count: int) -> None:
    while len(publisher.published) < count:  # noqa: ASYNC110 - virtual time, autojumped
        await trio.sleep(0.01)


async def test_a_high_priority_part_goes_ahead_of_normal_tasks_waiting_for_the_device(
    shard: tuple[ShardService, RecordingPublisher, Answer],
    autojump_clock: trio.testing.MockClock,
) -> None:
    service, publisher, answer = shard
    normal = job(1, 1, ["d0"], 3)
    urgent = job(2, 100, ["d0"], 1, priority="high")
    with trio.fail_after(GUARD):
        service.adopt(normal)
        await trio.testing.wait_all_tasks_blocked()  # its first task is in flight
        service.adopt(urgent)
        while normal.finish_at is None or urgent.finish_at is None:
            await answer_all(publisher, answer)
            await trio.sleep(0.01)
    order = [request["id"] for _, request in publisher.published]
    assert order == [1, 100, 2, 3]


async def test_a_scheduled_part_sends_nothing_before_its_start(
    shard: tuple[ShardService, RecordingPublisher, Answer],
    autojump_clock: trio.testing.MockClock,
) -> None:
    service, publisher, answer = shard
    start_at = datetime.fromtimestamp(100, tz=UTC).isoformat()
    record = job(1, 1, ["d0", "d1"], 1, schedule={"startAt": start_at})
    with trio.fail_after(GUARD):
        service.adopt(record)
        part = service.jobs[1]
        await trio.sleep(99.9)
        assert publisher.published == [] and record.status == "scheduled"
        await poll_published(publisher, 2)
        assert trio.current_time() == pytest.approx(100, abs=0.05)
        await answer_all(publisher, answer)
        await part.ended.wait()
    assert record.status == "resolved"


async def test_a_paced_part_paused_with_a_task_at_its_device_sends_it_on_resume_within_grant(
    shard: tuple[ShardService, RecordingPublisher, Answer],
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A paced part's task handed to a device still busy with another job's comes back
    unsent when the pause holds the part (``TaskHeldBack``): it no longer counts as used,
    and after the resume it goes first, the part's sends staying within its grant."""
    service, publisher, answer = shard
    busy = job(1, 1, ["d0"], 1)
    paced = job(2, 100, ["d0", "d1"], 2, rollout={"maxInFlight": 2})

    def sent_of_paced() -> list[dict[str, Any]]:
        return [request for _, request in publisher.published if request["id"] >= 100]

    with trio.fail_after(GUARD):
        service.adopt(busy)
        service.adopt(paced)
        part = service.jobs[2]
        pacer = part.pacer
        assert pacer is not None
        pacer.grant(2, 4)
        await trio.testing.wait_all_tasks_blocked()
        # d1's first task went out; d0's waits at its device behind job 1's.
        assert [request["id"] for request in sent_of_paced()] == [101]
        assert pacer.used == 2
        await follow(part, JobWide(paused=True))
        answer(sent_of_paced()[0])
        await trio.testing.wait_all_tasks_blocked()
        answer(publisher.published[0][1])  # job 1's: d0's turn comes for the paused part
        await trio.testing.wait_all_tasks_blocked()
        assert pacer.used == 1, "the task held back still counts as used"
        assert [request["id"] for request in sent_of_paced()] == [101]
        await follow(part, JobWide())
        # One more may go (1 final + 1 in flight = the grant of 2): the one held back.
        assert [request["id"] for request in sent_of_paced()] == [101, 100]
        pacer.grant(4, 4)
        while part.record.finish_at is None:
            await answer_all(publisher, answer)
            assert pacer.used <= 4
            await trio.sleep(0.01)
    assert paced.status == "resolved" and len(sent_of_paced()) == 4
