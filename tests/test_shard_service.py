"""One shard served by a clustered gateway (pm/shard_service.py), without a broker or a
database: job parts adopted in order reach each device in job order, a task taken over in
flight is re-sent at its turn, and losing the shard stops it without settling anything.
Time is trio's virtual clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial

import msgspec
import pytest
import trio
import trio.testing

from pm.cluster import ShardLease
from pm.cluster._writes import ClusterWrites
from pm.config import Config
from pm.job_options import JobOptions, RolloutOptions
from pm.presence import PresenceBook
from pm.protocol import TopicTemplates
from pm.shard_service import ShardService, serve_shard
from pm.state import JobRecord
from tests.fakes import RecordingPublisher
from tests.stores import batch, make_job

LEASE = ShardLease(shard=3, epoch=2, expires_at=0.0, owner="gw-a")
GUARD = 60.0


@pytest.fixture
def config() -> Config:
    return msgspec.convert({"tasks": {"default_timeout": 30}}, Config)


async def start_service(
    nursery: trio.Nursery, config: Config, publisher: RecordingPublisher, writes: ClusterWrites
) -> tuple[ShardService, Callable[[dict[str, object]], None]]:
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
            writes=writes,
            wall_clock=trio.current_time,
        ),
    )

    def answer(request: dict[str, object]) -> None:
        payload = {"id": request["id"], "code": 200, "data": {}}
        service.fleet.on_answer(str(request["tunnel"]), json.dumps(payload).encode())

    return service, answer


def part(job_id: int, first_task: int, devices: list[str], resource: str) -> JobRecord:
    record = make_job(job_id, first_task, batch((devices, resource)), created_at=0.0)
    return record


async def test_parts_reach_each_device_in_the_order_they_were_adopted(
    config: Config, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    publisher, writes = RecordingPublisher(), ClusterWrites("gw-a", 8)
    service, answer = await start_service(nursery, config, publisher, writes)
    devices = [f"d{n}" for n in range(20)]
    first, second = part(1, 1, devices, "/first"), part(2, 100, devices, "/second")
    with trio.fail_after(GUARD):
        service.adopt(first)
        service.adopt(second)
        while first.finish_at is None or second.finish_at is None:
            await trio.testing.wait_all_tasks_blocked()
            pending = [request for _, request in publisher.published if "answered" not in request]
            for request in pending:
                request["answered"] = True
                answer(request)
            await trio.sleep(0.01)
    for device in devices:
        resources = [r["resource"] for t, r in publisher.published if t.endswith(f"/{device}")]
        assert resources == ["/first", "/second"], device
    # Recorded with the lease they were taken under; the job recounted with its part's end.
    window = writes.take_window()
    assert {lease for _, lease in window.tasks.values()} == {LEASE}
    assert len(window.tasks) == 40
    assert window.jobs == {1: "resolved", 2: "resolved"}


async def test_a_task_taken_over_in_flight_is_sent_again_at_its_turn(
    config: Config, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    publisher, writes = RecordingPublisher(), ClusterWrites("gw-a", 8)
    service, answer = await start_service(nursery, config, publisher, writes)
    record = part(1, 1, ["d0"], "/r")
    task = record.tasks[0]
    task.status, task.sends, task.attempts, task.sent_at = "sent", 1, 1, trio.current_time()
    record = JobRecord.restore(1, [task], None, 0.0, "dispatching", None)
    with trio.fail_after(GUARD):
        service.adopt(record)
        job = service.jobs[record.id]
        # Not waiting for the device to announce itself (it did, long ago, perhaps).
        await trio.testing.wait_all_tasks_blocked()
        assert [request["id"] for _, request in publisher.published] == [task.id]
        answer(publisher.published[0][1])
        await job.ended.wait()
    assert task.status == "resolved" and task.sends == 2


async def test_losing_the_shard_stops_it_without_settling_anything(
    config: Config, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    publisher, writes = RecordingPublisher(), ClusterWrites("gw-a", 8)
    service, answer = await start_service(nursery, config, publisher, writes)
    record = part(1, 1, ["d0", "d1"], "/r")
    with trio.fail_after(GUARD):
        service.adopt(record)
        await trio.testing.wait_all_tasks_blocked()
        assert len(publisher.published) == 2
        answer(publisher.published[0][1])
        await trio.testing.wait_all_tasks_blocked()
        service.stop()
        # Past the task timeout: the stopped shard reports nothing more.
        await trio.sleep(config.tasks.default_timeout + 5)
    answered = publisher.published[0][1]["id"]  # the devices' order is trio's
    expected = {task.id: "resolved" if task.id == answered else "sent" for task in record.tasks}
    assert {task.id: task.status for task in record.tasks} == expected
    assert record.finish_at is None
    window = writes.take_window()
    assert {task.id: task.status for task, _ in window.tasks.values()} == expected
    assert window.jobs == {1: None}
    assert service.fleet.in_flight == 0


async def test_a_paced_part_sends_within_its_grant_and_holds_up_no_other_part(
    config: Config, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A job with ``rollout`` hands out tasks only while the shard's grant allows (the
    tasks final before it was adopted count as used), and a job adopted after it on the same
    shard is not held up while it waits for grants."""
    publisher, writes = RecordingPublisher(), ClusterWrites("gw-a", 8)
    service, answer = await start_service(nursery, config, publisher, writes)
    paced_devices = [f"p{n}" for n in range(6)]
    plain = part(1, 1, paced_devices[:1], "/first")
    paced = part(2, 100, paced_devices, "/paced")
    paced.options = JobOptions(rollout=RolloutOptions(max_in_flight=2))
    later = part(3, 200, [f"q{n}" for n in range(4)], "/later")

    def sent(resource: str) -> list[dict[str, object]]:
        return [r for _, r in publisher.published if r["resource"] == resource]

    with trio.fail_after(GUARD):
        service.adopt(plain)
        service.adopt(paced)
        service.adopt(later)
        pacer = service.jobs[2].pacer
        assert pacer is not None and set(service.paced_parts()) == {2}
        await trio.testing.wait_all_tasks_blocked()
        # No grant read yet: nothing of the paced job, all of the job adopted after it.
        assert (len(sent("/paced")), len(sent("/later"))) == (0, 4)
        answer(sent("/first")[0])  # else p0's paced task, handed out, waits behind it
        # The shard holds 8 of the job's tasks, 2 of them final before the part (6 tasks)
        # was adopted: a grant of 4 leaves room for 2.
        pacer.grant(4, 8)
        await trio.testing.wait_all_tasks_blocked()
        assert len(sent("/paced")) == 2
        answer(sent("/paced")[0])
        await trio.testing.wait_all_tasks_blocked()
        assert len(sent("/paced")) == 2  # settled, but its task counts as used: no more room
        pacer.grant(7, 8)
        await trio.testing.wait_all_tasks_blocked()
        assert len(sent("/paced")) == 5
        for request in sent("/paced")[1:]:
            answer(request)
        pacer.grant(8, 8)
        await trio.testing.wait_all_tasks_blocked()
        answer(sent("/paced")[-1])
        await service.jobs[2].ended.wait()
    assert paced.status == "resolved" and len(sent("/paced")) == 6
