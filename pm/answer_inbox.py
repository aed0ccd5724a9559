"""A device actor's answers: a bounded FIFO with one waiting task, fed by the MQTT reader.

Each device actor (:mod:`pm.devices`) owns one :class:`AnswerInbox` for its whole life, and
every request it has in flight hands it to :mod:`pm.in_flight`, which puts the answers routed
to that device in it (and ``None`` when a copy of the request is due). It replaces a trio
memory channel, for the one thing the per-task path does with it, 10,000 times a second: a
receive that finds nothing raised ``WouldBlock`` inside trio and parked on the channel's
tables; here the actor parks with :func:`trio.lowlevel.wait_task_rescheduled` and a put hands
it the answer directly. FIFO and the bound are the channel's: what arrives while the actor is
busy waits in order, and a device flooding beyond ``capacity`` is refused (the caller counts
it).

Only the owning actor waits on it, one wait at a time (it is not a channel: no cloning, no
closing). Its wait is cancellable like a channel's receive (the task timeout is the actor's
cancel scope around it). An answer already queued is returned without yielding (a cancelled
scope still raises first): the actor's loop waits on an empty inbox, or on its mailbox,
before long (the inbox is bounded).

Error handling: none; a second waiter is a bug and raises :class:`RuntimeError`.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import outcome
import trio

Item = TypeVar("Item")


class AnswerInbox(Generic[Item]):
    """At most ``capacity`` items waiting, oldest first, and the one task waiting for them."""

    __slots__ = ("_capacity", "_items", "_waiter")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self._capacity = capacity
        self._items: deque[Item] = deque()
        self._waiter: trio.lowlevel.Task | None = None

    def __len__(self) -> int:
        """Items put and not taken yet (not counting one handed to the waiter)."""
        return len(self._items)

    def put_nowait(self, item: Item) -> bool:
        """Hand ``item`` to the waiting task, else queue it; ``False`` (dropped) if full."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter, outcome.Value(item))
            return True
        if len(self._items) >= self._capacity:
            return False
        self._items.append(item)
        return True

    async def get(self) -> Item:
        """The oldest item; waits while there is none. Cancellable as a channel's receive:
        in a cancelled scope it raises even with an item queued (which stays queued)."""
        if self._items:
            # The task's timeout or its job's end, already due, comes first (no yield else).
            await trio.lowlevel.checkpoint_if_cancelled()
            return self._items.popleft()
        if self._waiter is not None:
            raise RuntimeError("AnswerInbox has one waiter at a time")
        self._waiter = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        item: Item = await trio.lowlevel.wait_task_rescheduled(abort)
        return item

    def take_all(self) -> list[Item]:
        """Every queued item, oldest first, leaving none."""
        items = list(self._items)
        self._items.clear()
        return items
