"""A job's send queue (pm/send_queue.py), pure: the order its tasks are taken in when pacing
puts one back and a pause sends others back."""

from __future__ import annotations

from pm.job_options import RolloutOptions
from pm.rollout import Pacer, RolloutState
from pm.send_queue import SendQueue
from tests.stores import batch, make_job


def test_a_task_held_back_goes_before_a_fresh_one_the_window_put_back() -> None:
    """Window 2 over two steps of d0 and d1: d0's second task is taken and put back (the
    window is full); then d0's first task comes back unsent (a pause held it at its device).
    d0's first task must go before its second: it had its turn first."""
    record = make_job(1, 1, batch((["d0", "d1"], "/first"), (["d0", "d1"], "/second")))
    d0_first, d1_first, d0_second, d1_second = record.tasks
    queue = SendQueue(record.tasks, Pacer(RolloutOptions(max_in_flight=2), RolloutState()))
    for expected in (d0_first, d1_first):
        assert queue.take() is expected
        queue.handed_out(expected, 0.0)
    assert queue.take() is d0_second
    queue.put_back(d0_second)  # the window is full
    queue.held_back(d0_first)
    taken = []
    while (task := queue.take()) is not None:
        taken.append(task)
        queue.handed_out(task, 0.0)
    assert taken == [d0_first, d0_second, d1_second]


def test_a_task_held_back_and_put_back_is_still_taken_first() -> None:
    record = make_job(1, 1, batch((["d0", "d1"], "/first")))
    d0_first, d1_first = record.tasks
    queue = SendQueue(record.tasks, Pacer(RolloutOptions(max_in_flight=1), RolloutState()))
    assert queue.take() is d0_first
    queue.handed_out(d0_first, 0.0)
    queue.held_back(d0_first)
    assert queue.take() is d0_first
    queue.put_back(d0_first)
    assert [queue.take(), queue.take()] == [d0_first, d1_first]
