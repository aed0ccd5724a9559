"""A device actor's answer inbox: FIFO, its bound, the one waiter, cancellation; and the
fleet's use of it (a device flooding a busy actor), on trio's virtual clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors import open_mailbox
from pm.answer_inbox import AnswerInbox
from pm.devices import ANSWER_BUFFER, Fleet
from pm.task_machine import TaskSent, TaskSettled
from tests.fakes import RecordingPublisher
from tests.test_devices import answer, drain, fleet, task  # noqa: F401 - fleet: a fixture


async def test_items_queued_while_nobody_waits_come_out_oldest_first() -> None:
    inbox: AnswerInbox[int] = AnswerInbox(4)
    for item in (1, 2, 3):
        assert inbox.put_nowait(item)
    assert len(inbox) == 3
    assert [await inbox.get() for _ in range(3)] == [1, 2, 3]
    assert len(inbox) == 0


async def test_a_full_inbox_refuses_and_keeps_what_it_holds() -> None:
    inbox: AnswerInbox[int] = AnswerInbox(2)
    assert inbox.put_nowait(1) and inbox.put_nowait(2)
    assert not inbox.put_nowait(3)
    assert inbox.take_all() == [1, 2]
    assert len(inbox) == 0 and inbox.put_nowait(4)


async def test_a_put_hands_the_item_to_the_waiter_without_queueing_it() -> None:
    inbox: AnswerInbox[str] = AnswerInbox(1)
    got: list[str] = []

    async def waiter() -> None:
        got.append(await inbox.get())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert inbox.put_nowait("answer")
            assert len(inbox) == 0  # handed over, not queued: the bound is still free
            assert inbox.put_nowait("next")
    assert got == ["answer"]
    assert inbox.take_all() == ["next"]


async def test_a_cancelled_wait_leaves_the_inbox_as_it_was(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inbox: AnswerInbox[int] = AnswerInbox(2)
    with trio.move_on_after(3) as scope:
        await inbox.get()
    assert scope.cancelled_caught
    # Nobody waits any more: the next item is queued, and a new wait takes it.
    assert inbox.put_nowait(7)
    assert len(inbox) == 1
    assert await inbox.get() == 7


async def test_a_cancelled_scope_raises_before_an_item_queued_is_taken() -> None:
    # As a channel's receive: a task whose timeout (or job's end) is already due does not
    # take the answer that waited in its inbox meanwhile.
    inbox: AnswerInbox[int] = AnswerInbox(2)
    assert inbox.put_nowait(1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await inbox.get()
    assert scope.cancelled_caught
    assert inbox.take_all() == [1]


async def test_a_second_waiter_is_a_bug() -> None:
    inbox: AnswerInbox[int] = AnswerInbox(1)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(inbox.get)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(RuntimeError, match="one waiter"):
                await inbox.get()
            nursery.cancel_scope.cancel()


async def test_answers_beyond_the_buffer_of_a_busy_device_actor_are_counted_and_dropped(
    fleet: tuple[Fleet, RecordingPublisher],  # noqa: F811 - the fixture
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The actor is stuck telling its job TaskSent (the job's mailbox of one is full): the
    # device's answers wait in its inbox, the first ANSWER_BUFFER of them; the rest are
    # dropped and counted. Once the job reads, the first answer settles the task and the
    # others are stale (duplicates of the answer that settled it).
    devices, _ = fleet
    reports, inbox = open_mailbox("job:1", 1)
    reports.tell_nowait(TaskSent(99))  # fills it
    await devices.dispatch(task(1, "a"), reports)
    await trio.testing.wait_all_tasks_blocked()
    for _ in range(ANSWER_BUFFER + 3):
        answer(devices, "a", 1)
    assert devices.dropped["answer_overflow"] == 3
    received = [await inbox.receive() for _ in range(3)]
    assert received == [TaskSent(99), TaskSent(1), TaskSettled(1, "resolved", {"n": 1}, 200)]
    await trio.testing.wait_all_tasks_blocked()
    assert drain(inbox) == []
    assert devices.dropped["duplicate_answer"] == ANSWER_BUFFER - 1
    assert devices.in_flight == 0
