"""Job feeds and watchers on trio's virtual clock: ordering, coalescing and slow watchers."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from pm.schemas import BatchEntry, JobMessage, TaskMessage, TaskView, WatchMessage
from pm.state import JobRecord, expand_batch
from pm.watch import JobFeed, Watcher, encode_job_message

INTERVAL = 0.25


def make_job(devices: int) -> JobRecord:
    entry = msgspec.convert(
        {"method": "get", "resource": "/r", "__destination": [f"d{n}" for n in range(devices)]},
        BatchEntry,
    )
    tasks = expand_batch(
        1,
        [entry],
        next_task_id=itertools.count(1).__next__,
        tunnel_for=lambda device: f"/remote/{device}/response",
        default_timeout=30.0,
        now=1_000_000_000.0,
    )
    return JobRecord(1, tasks, None, 1_000_000_000.0)


def make_feed(devices: int = 3, capacity: int = 16) -> tuple[JobRecord, JobFeed]:
    job = make_job(devices)
    return job, JobFeed(lambda: job.view(None), capacity)


def decode(message: bytes) -> JobMessage | TaskMessage:
    return msgspec.json.decode(message, type=WatchMessage)


def job_of(message: bytes) -> dict[str, Any]:
    decoded = decode(message)
    assert isinstance(decoded, JobMessage), decoded
    return msgspec.to_builtins(decoded.job)


def task_of(message: bytes) -> TaskView:
    decoded = decode(message)
    assert isinstance(decoded, TaskMessage), decoded
    return decoded.task


def view_of(job: JobRecord, index: int) -> Callable[[], TaskView]:
    return job.tasks[index].view


async def test_the_first_message_is_a_job_snapshot_even_after_task_changes() -> None:
    job, feed = make_feed()
    with Watcher(feed, INTERVAL) as watcher:
        job.mark_sent(job.tasks[0])
        feed.task_changed(view_of(job, 0))
        feed.job_changed()
        first = await watcher.__anext__()
        assert job_of(first)["status"] == "dispatching"
        assert "collection" not in job_of(first)
        assert task_of(await watcher.__anext__()).task.status == "sent"


async def test_task_messages_arrive_in_order(autojump_clock: trio.testing.MockClock) -> None:
    job, feed = make_feed(devices=3)
    with Watcher(feed, INTERVAL) as watcher:
        await watcher.__anext__()
        for index in (2, 0, 1):
            job.mark_sent(job.tasks[index])
            feed.task_changed(view_of(job, index))
        start = trio.current_time()
        received = [task_of(await watcher.__anext__()) for _ in range(3)]
        assert trio.current_time() - start == 0
        assert [(task.id, task.task.status) for task in received] == [
            (3, "sent"),
            (1, "sent"),
            (2, "sent"),
        ]


async def test_a_waiting_watcher_wakes_on_a_task_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job, feed = make_feed()
    received: list[bytes] = []
    with Watcher(feed, INTERVAL) as watcher:
        await watcher.__anext__()

        async def read_one() -> None:
            received.append(await watcher.__anext__())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_one)
            await trio.testing.wait_all_tasks_blocked()
            assert received == []
            await trio.sleep(7.0)
            assert received == []  # nothing changed, nothing sent
            feed.task_changed(view_of(job, 1))
        assert task_of(received[0]).id == 2


async def test_job_snapshots_are_coalesced_to_one_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job, feed = make_feed(devices=4)
    with Watcher(feed, INTERVAL) as watcher:
        t0 = trio.current_time()
        await watcher.__anext__()
        # Changes right after the first snapshot: the next one waits for the interval and
        # carries the latest state.
        for task in job.tasks[:2]:
            job.mark_sent(task)
            job.settle(task, "resolved", None, 1_000_000_001.0)
            feed.job_changed()
        second = job_of(await watcher.__anext__())
        assert trio.current_time() - t0 == INTERVAL
        assert (second["doneCount"], second["progress"]) == (2, 50)

        # A change long after the last snapshot goes out at once.
        await trio.sleep(10.0)
        job.mark_sent(job.tasks[2])
        job.mark_progress(job.tasks[2], 40)
        feed.job_changed()
        t1 = trio.current_time()
        assert job_of(await watcher.__anext__())["progress"] == 60
        assert trio.current_time() - t1 == 0

        # And the one after it waits until exactly one interval after that one.
        job.mark_progress(job.tasks[2], 80)
        feed.job_changed()
        assert job_of(await watcher.__anext__())["progress"] == 70
        assert trio.current_time() - t1 == INTERVAL


async def test_task_messages_are_not_held_back_by_a_coalesced_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job, feed = make_feed()
    with Watcher(feed, INTERVAL) as watcher:
        t0 = trio.current_time()
        await watcher.__anext__()
        feed.job_changed()
        received: list[tuple[str, float]] = []

        async def read_two() -> None:
            for _ in range(2):
                message = await watcher.__anext__()
                received.append((decode(message).__class__.__name__, trio.current_time() - t0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_two)
            await trio.sleep(0.1)
            feed.task_changed(view_of(job, 0))
        assert received == [("TaskMessage", 0.1), ("JobMessage", INTERVAL)]


async def test_a_watcher_that_never_reads_misses_task_messages_but_gets_the_final_one_last(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job, feed = make_feed(devices=10, capacity=4)
    with Watcher(feed, INTERVAL) as slow, Watcher(feed, INTERVAL) as fast:
        await slow.__anext__()
        await fast.__anext__()
        fast_tasks: list[int] = []
        for index, task in enumerate(job.tasks):
            job.mark_sent(task)
            job.settle(task, "resolved", None, 1_000_000_001.0)
            feed.task_changed(view_of(job, index))
            feed.job_changed()
            fast_tasks.append(task_of(await fast.__anext__()).id)
        feed.close()
        assert fast_tasks == list(range(1, 11))

        slow_messages = [message async for message in slow]
        assert slow.missed == 6
        assert [task_of(message).id for message in slow_messages[:-1]] == [7, 8, 9, 10]
        final = job_of(slow_messages[-1])
        assert (final["status"], final["doneCount"], final["progress"]) == ("resolved", 10, 100)
        assert slow_messages[-1] == feed.final_message

        fast_rest = [message async for message in fast]
        assert fast.missed == 0
        assert fast_rest == [feed.final_message]
    assert feed.watchers == 0


async def test_a_job_already_final_at_subscribe_sends_exactly_the_final_message() -> None:
    job, feed = make_feed(devices=1)
    job.finish("cancelled", 1_000_000_002.0)
    feed.close()
    feed.close()  # idempotent: the final snapshot is fixed once
    with Watcher(feed, INTERVAL) as watcher:
        assert feed.watchers == 1
        messages = [message async for message in watcher]
        assert feed.watchers == 0
    assert messages == [feed.final_message]
    assert job_of(messages[0])["status"] == "cancelled"
    assert feed.watchers == 0


async def test_the_final_message_is_fixed_when_the_feed_closes() -> None:
    job, feed = make_feed(devices=1)
    job.settle(job.tasks[0], "resolved", None, 1_000_000_001.0)
    feed.close()
    expected = encode_job_message(job.view(None))
    job.status = "cancelled"  # a later change to the record does not alter it
    assert feed.final_message == expected
    with Watcher(feed, INTERVAL) as watcher:
        assert [message async for message in watcher] == [expected]


async def test_a_blocked_watcher_gets_the_final_message_when_the_feed_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job, feed = make_feed(devices=1)
    with Watcher(feed, INTERVAL) as watcher:
        received: list[bytes] = []

        async def read_all() -> None:
            async for message in watcher:
                received.append(message)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await trio.testing.wait_all_tasks_blocked()
            assert len(received) == 1  # the first snapshot
            job.settle(job.tasks[0], "resolved", None, 1_000_000_001.0)
            feed.task_changed(view_of(job, 0))
            feed.job_changed()
            feed.close()
        assert [decode(message).__class__ for message in received] == [
            JobMessage,
            TaskMessage,
            JobMessage,
        ]
        assert received[-1] == feed.final_message


def test_task_changed_builds_nothing_when_no_watcher_listens() -> None:
    job, feed = make_feed()
    built: list[int] = []

    def view() -> TaskView:
        built.append(1)
        return job.tasks[0].view()

    feed.task_changed(view)
    feed.job_changed()
    assert built == [] and feed.next_sequence == 0 and feed.job_version == 1

    watchers = [Watcher(feed, INTERVAL) for _ in range(3)]
    feed.task_changed(view)
    assert built == [1]  # encoded once, however many listen
    assert feed.next_sequence == 1
    for watcher in watchers:
        watcher.close()
        watcher.close()  # idempotent
    assert feed.watchers == 0
    feed.task_changed(view)
    assert built == [1] and feed.next_sequence == 1


async def test_a_late_watcher_does_not_replay_earlier_task_messages() -> None:
    job, feed = make_feed()
    with Watcher(feed, INTERVAL) as early:
        feed.task_changed(view_of(job, 0))
        with Watcher(feed, INTERVAL) as late:
            feed.task_changed(view_of(job, 1))
            await late.__anext__()
            assert task_of(await late.__anext__()).id == 2
        await early.__anext__()
        assert [task_of(await early.__anext__()).id for _ in range(2)] == [1, 2]


@pytest.mark.parametrize("capacity", [1, 3])
def test_feed_log_keeps_only_the_last_capacity_messages(capacity: int) -> None:
    job, feed = make_feed(capacity=capacity)
    with Watcher(feed, INTERVAL):
        for _ in range(5):
            feed.task_changed(view_of(job, 0))
    assert (feed.first_sequence, feed.next_sequence) == (5 - capacity, 5)
    assert len(list(feed.messages_from(feed.first_sequence))) == capacity
