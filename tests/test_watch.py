"""Job feeds and watchers on trio's virtual clock: ordering, coalescing and slow watchers."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import pm.watch
from pm.schemas import JobMessage, TaskMessage, TasksMessage, TaskView, WatchMessage
from pm.state import JobRecord
from pm.watch import (
    JobFeed,
    Watcher,
    encode_job_message,
    parse_task_mode,
    take_batch,
    task_message,
)
from tests.stores import job_on_devices

INTERVAL = 0.25


def make_feed(devices: int = 3, capacity: int = 16) -> tuple[JobRecord, JobFeed]:
    job = job_on_devices(devices)
    return job, JobFeed(lambda: job.view(None), capacity)


def decode(message: bytes) -> JobMessage | TaskMessage | TasksMessage:
    return msgspec.json.decode(message, type=WatchMessage)


def job_of(message: bytes) -> dict[str, Any]:
    decoded = decode(message)
    assert isinstance(decoded, JobMessage), decoded
    return msgspec.to_builtins(decoded.job)


def task_of(message: bytes) -> TaskView:
    decoded = decode(message)
    assert isinstance(decoded, TaskMessage), decoded
    return decoded.task


def tasks_of(message: bytes) -> list[tuple[int, str]]:
    decoded = decode(message)
    assert isinstance(decoded, TasksMessage), decoded
    return [(task.id, task.task.status) for task in decoded.tasks]


def view_of(job: JobRecord, index: int) -> Callable[[], TaskView]:
    return job.tasks[index].view


async def test_the_first_message_is_a_job_snapshot_even_after_task_changes() -> None:
    job, feed = make_feed()
    with Watcher(feed, INTERVAL) as watcher:
        job.mark_sent(job.tasks[0], 1.0)
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
            job.mark_sent(job.tasks[index], 1.0)
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
            job.mark_sent(task, 1.0)
            job.settle(task, "resolved", None, 1_000_000_001.0)
            feed.job_changed()
        second = job_of(await watcher.__anext__())
        assert trio.current_time() - t0 == INTERVAL
        assert (second["doneCount"], second["progress"]) == (2, 50)

        # A change long after the last snapshot goes out at once.
        await trio.sleep(10.0)
        job.mark_sent(job.tasks[2], 1.0)
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
            job.mark_sent(task, 1.0)
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
    assert len(list(feed.views_from(feed.first_sequence))) == capacity


# -- task modes: "each" above; "batch" and "none" below --------------------------------------


def test_joined_messages_equal_msgspec_encodings() -> None:
    job = job_on_devices(3)
    job.mark_sent(job.tasks[1], 1.0)
    views = [task.view() for task in job.tasks]
    encoded = deque(msgspec.json.encode(view) for view in views)
    assert task_message(encoded[1]) == msgspec.json.encode(TaskMessage(task=views[1]))
    assert take_batch(encoded) == msgspec.json.encode(TasksMessage(tasks=views))
    assert not encoded


def test_batch_messages_are_split_near_max_batch_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    job = job_on_devices(5)
    encoded = deque(msgspec.json.encode(task.view()) for task in job.tasks)
    # Two views fit, a third would not.
    monkeypatch.setattr(pm.watch, "MAX_BATCH_BYTES", len(encoded[0]) * 2 + 2)
    messages = []
    while encoded:
        messages.append(take_batch(encoded))
    assert [[task_id for task_id, _ in tasks_of(m)] for m in messages] == [[1, 2], [3, 4], [5]]
    # A view larger than the limit still goes, alone.
    monkeypatch.setattr(pm.watch, "MAX_BATCH_BYTES", 1)
    encoded.extend(msgspec.json.encode(task.view()) for task in job.tasks)
    assert [len(tasks_of(take_batch(encoded))) for _ in range(5)] == [1] * 5


def test_parse_task_mode() -> None:
    assert [parse_task_mode(mode) for mode in ("each", "batch", "none")] == [
        "each",
        "batch",
        "none",
    ]
    with pytest.raises(ValueError, match="each, batch, none"):
        parse_task_mode("all")
    job, feed = make_feed()
    with pytest.raises(ValueError):
        Watcher(feed, INTERVAL, "some")  # type: ignore[arg-type]
    assert feed.watchers == 0


async def test_batch_sends_the_changes_of_an_interval_in_one_message_then_the_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job, feed = make_feed(devices=4)
    with Watcher(feed, INTERVAL, "batch") as watcher:
        t0 = trio.current_time()
        assert job_of(await watcher.__anext__())["status"] == "pending"
        # Changes right after the first snapshot wait for the tick, in order, all of them.
        for index in (2, 0):
            job.mark_sent(job.tasks[index], 1.0)
            feed.task_changed(view_of(job, index))
            feed.job_changed()
        job.settle(job.tasks[2], "resolved", None, 1_000_000_001.0)
        feed.task_changed(view_of(job, 2))
        feed.job_changed()
        assert tasks_of(await watcher.__anext__()) == [(3, "sent"), (1, "sent"), (3, "resolved")]
        assert trio.current_time() - t0 == INTERVAL
        assert job_of(await watcher.__anext__())["doneCount"] == 1
        assert trio.current_time() - t0 == INTERVAL

        # Idle, then a change: it goes out at once, and the next one a full interval later.
        await trio.sleep(10.0)
        t1 = trio.current_time()
        job.mark_sent(job.tasks[1], 1.0)
        feed.task_changed(view_of(job, 1))
        feed.job_changed()
        assert tasks_of(await watcher.__anext__()) == [(2, "sent")]
        assert job_of(await watcher.__anext__())["status"] == "dispatching"
        assert trio.current_time() - t1 == 0
        job.settle(job.tasks[1], "error", None, 1_000_000_001.0)
        feed.task_changed(view_of(job, 1))
        feed.job_changed()
        assert tasks_of(await watcher.__anext__()) == [(2, "error")]
        assert trio.current_time() - t1 == INTERVAL
        assert job_of(await watcher.__anext__())["errorCount"] == 1


async def test_batch_flushes_its_tasks_before_the_final_message_without_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job, feed = make_feed(devices=2)
    with Watcher(feed, INTERVAL, "batch") as watcher:
        t0 = trio.current_time()
        await watcher.__anext__()
        for index, task in enumerate(job.tasks):
            job.settle(task, "resolved", None, 1_000_000_001.0)
            feed.task_changed(view_of(job, index))
            feed.job_changed()
        feed.close()
        rest = [message async for message in watcher]
        assert trio.current_time() - t0 == 0
    assert tasks_of(rest[0]) == [(1, "resolved"), (2, "resolved")]
    assert rest[1:] == [feed.final_message]
    assert feed.watchers == feed.task_watchers == 0


async def test_a_slow_batch_watcher_misses_task_changes_but_gets_the_final_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job, feed = make_feed(devices=10, capacity=4)
    with Watcher(feed, INTERVAL, "batch") as slow:
        await slow.__anext__()
        for index, task in enumerate(job.tasks):
            job.settle(task, "resolved", None, 1_000_000_001.0)
            feed.task_changed(view_of(job, index))
            feed.job_changed()
        feed.close()
        messages = [message async for message in slow]
    assert slow.missed == 6
    assert [task_id for task_id, _ in tasks_of(messages[0])] == [7, 8, 9, 10]
    assert messages[1:] == [feed.final_message]


async def test_none_sends_only_coalesced_snapshots_and_builds_no_task_view(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job, feed = make_feed(devices=3)
    built: list[int] = []

    def view_of_first() -> TaskView:
        built.append(1)
        return job.tasks[0].view()

    with Watcher(feed, INTERVAL, "none") as watcher:
        assert (feed.watchers, feed.task_watchers) == (1, 0)
        t0 = trio.current_time()
        assert job_of(await watcher.__anext__())["doneCount"] == 0
        received: list[tuple[int, float]] = []

        async def read_all() -> None:
            async for message in watcher:
                received.append((job_of(message)["doneCount"], trio.current_time() - t0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            for task in job.tasks:
                await trio.sleep(0.1)
                job.settle(task, "resolved", None, 1_000_000_001.0)
                feed.task_changed(view_of_first)
                feed.job_changed()
            feed.close()
    # Changes at 0.1, 0.2, 0.3: the tick at 0.25 sends the state of then; the next tick
    # would be at 0.5, but the final message goes out at once (at 0.3).
    assert received == [(2, INTERVAL), (3, pytest.approx(0.3))]
    assert built == [] and feed.next_sequence == 0
    assert feed.watchers == 0


async def test_a_crowd_of_watchers_shares_the_jobs_update_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job, feed = make_feed(devices=2)
    # Budget 10 updates/s for the job, 5 watchers: each gets one every 0.5 s at most (more
    # than INTERVAL); alone, a watcher would get one every INTERVAL.
    crowd = [Watcher(feed, INTERVAL, "none", max_updates_per_second=10) for _ in range(5)]
    watcher = crowd[0]
    t0 = trio.current_time()
    await watcher.__anext__()
    job.mark_sent(job.tasks[0], 1.0)
    feed.job_changed()
    assert job_of(await watcher.__anext__())["status"] == "dispatching"
    assert trio.current_time() - t0 == 0.5
    for other in crowd[1:]:
        other.close()
    job.settle(job.tasks[0], "resolved", None, 1_000_000_001.0)
    feed.job_changed()
    # Interval decided when the last update went out (5 watchers then), the next one alone.
    assert job_of(await watcher.__anext__())["doneCount"] == 1
    assert trio.current_time() - t0 == 1.0
    job.mark_sent(job.tasks[1], 1.0)
    feed.job_changed()
    await watcher.__anext__()
    assert trio.current_time() - t0 == 1.0 + INTERVAL
    watcher.close()


async def test_each_watchers_share_the_jobs_task_message_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job, feed = make_feed(devices=40, capacity=64)
    # Budget 40 task messages/s, 2 "each" watchers: 20/s each, counted per INTERVAL (0.25 s),
    # so 5 per window; a "none" watcher takes no share.
    watchers = [Watcher(feed, INTERVAL, "each", max_task_messages_per_second=40) for _ in range(2)]
    bystander = Watcher(feed, INTERVAL, "none", max_task_messages_per_second=40)
    watcher = watchers[0]
    t0 = trio.current_time()
    await watcher.__anext__()
    for index in range(12):
        job.mark_sent(job.tasks[index], 1.0)
        feed.task_changed(view_of(job, index))
    arrivals = []
    while len(arrivals) < 12:
        message = await watcher.__anext__()
        if isinstance(decode(message), TaskMessage):  # job snapshots come between them
            arrivals.append((task_of(message).id, trio.current_time() - t0))
    # In order, none lost, five per window.
    assert [task_id for task_id, _ in arrivals] == list(range(1, 13))
    assert [at for _, at in arrivals] == [0.0] * 5 + [INTERVAL] * 5 + [2 * INTERVAL] * 2
    assert watcher.missed == 0
    for other in (*watchers, bystander):
        other.close()


async def test_an_each_watcher_over_its_share_drops_the_rest_for_the_final_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job, feed = make_feed(devices=20, capacity=64)
    with Watcher(feed, INTERVAL, "each", max_task_messages_per_second=4) as watcher:
        await watcher.__anext__()
        for index in range(20):
            job.mark_sent(job.tasks[index], 1.0)
            feed.task_changed(view_of(job, index))
        # One message per 0.25 s window: the first goes out at once.
        assert task_of(await watcher.__anext__()).id == 1
        t0 = trio.current_time()
        job.finish("cancelled", 1_000_000_001.0)
        feed.close()
        # The final message does not wait for the 19 others: they are missed.
        assert job_of(await watcher.__anext__())["status"] == "cancelled"
        assert trio.current_time() - t0 == 0
        assert watcher.missed == 19
        with pytest.raises(StopAsyncIteration):
            await watcher.__anext__()
