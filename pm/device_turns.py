"""Whose turn it is: high-priority tasks ahead of normal ones on each device, and the fleet's
budget of requests in flight (``[tasks] max_in_flight``), high priority first when it is full.

Both belong to :class:`pm.devices.Fleet` and are used by its device actors only, on the trio
thread. Priority never pre-empts a task in flight: a high-priority task goes next on its
device, so a long normal job holds it up by at most the one task its device is working on.

How a high-priority task jumps the queue: it waits in its device's *lane* beside the device's
FIFO mailbox (which may be full of normal tasks), and a wake-up message (``None``) is put in
the mailbox only when the mailbox is empty (the actor may be parked on it, or retired; the
message spawns a fresh one). Otherwise the actor looks at the lane before each mailbox message.

Error handling: none of its own; a waiter cancelled while waiting for the budget gives its
place up (or passes on a slot it was just handed).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

import trio

from actors import ActorStopped, IdleInbox, Registry

from .task_machine import TaskHeldBack, TaskWaiting

if TYPE_CHECKING:
    from .devices import Dispatch

Turn = TypeVar("Turn")


class PriorityLanes(Generic[Turn]):
    """Per device, the high-priority tasks waiting beside its mailbox, oldest first."""

    def __init__(self) -> None:
        self._lanes: dict[str, deque[Turn]] = {}

    async def push(self, device: str, turn: Turn, registry: Registry[str, Turn | None]) -> None:
        """Queue ``turn`` in the lane of ``device``, waking its actor through ``registry``
        (spawning it if need be) unless its mailbox holds a message it will take first."""
        self._lanes.setdefault(device, deque()).append(turn)
        ref = registry.get(device)
        if ref is None or not ref.queued:
            await registry.tell(device, None)

    def pop(self, device: str) -> Turn | None:
        lane = self._lanes.get(device)
        if not lane:
            return None
        turn = lane.popleft()
        if not lane:
            del self._lanes[device]
        return turn

    def drain(self, device: str) -> list[Turn]:
        """Every task waiting in the lane of ``device`` (its actor failed)."""
        return list(self._lanes.pop(device, ()))


class DeviceTurns(Generic[Turn]):
    """A device actor's next task: from its high-priority lane first, else its mailbox (whose
    ``None`` messages only wake it). ``async for`` ends when the registry retires it."""

    def __init__(
        self, device: str, inbox: IdleInbox[Turn | None], lanes: PriorityLanes[Turn]
    ) -> None:
        self._device = device
        self._inbox = inbox
        self._lanes = lanes
        # Whether any device has a lane, read without a call: the per-task path (no job with
        # priority "high") skips the lanes.
        self._any_lane = lanes._lanes
        # A mailbox message taken while the lane had tasks: it goes after them.
        self._held: Turn | None = None

    def __aiter__(self) -> DeviceTurns[Turn]:
        return self

    async def __anext__(self) -> Turn:
        while True:
            turn = self._lanes.pop(self._device) if self._any_lane else None
            if turn is not None:
                return turn
            if self._held is not None:
                turn, self._held = self._held, None
                return turn
            message = await self._inbox.__anext__()
            if message is None:
                continue  # a wake-up: the lane has a task (or had: taken meanwhile)
            turn = self._lanes.pop(self._device) if self._any_lane else None
            if turn is None:
                return message
            # A high-priority task came while this one was on its way: it goes first.
            self._held = message
            return turn


class FleetBudget:
    """At most ``limit`` requests in flight across the fleet (``None``: no limit). When it is
    full, a freed slot goes to the oldest high-priority waiter, else the oldest waiter."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.in_flight = 0
        self._waiting: dict[bool, deque[trio.Event]] = {True: deque(), False: deque()}

    @property
    def waiting(self) -> int:
        return len(self._waiting[True]) + len(self._waiting[False])

    def free_for(self, high_priority: bool) -> bool:
        """Whether :meth:`acquire` would take a slot at once (always, without a limit)."""
        return self.limit is None or (
            self.in_flight < self.limit
            and not self._waiting[True]
            and (high_priority or not self._waiting[False])
        )

    async def acquire(self, high_priority: bool) -> None:
        """Take a slot, waiting (behind every high-priority waiter) while none is free."""
        if self.limit is None:
            return
        if self.free_for(high_priority):
            self.in_flight += 1
            return
        granted = trio.Event()
        queue = self._waiting[high_priority]
        queue.append(granted)
        try:
            await granted.wait()
        except BaseException:
            if granted.is_set():
                self.release()  # handed a slot as it was cancelled: pass it on
            else:
                queue.remove(granted)
            raise

    def resize(self, limit: int) -> None:
        """Change the limit (a clustered gateway's share, as it gains and loses shards): the
        waiters a larger one makes room for go now; above a smaller one, slots are freed as
        requests leave flight, and none is handed on until it is below."""
        self.limit = limit
        while self.in_flight < limit and self.waiting:
            self.in_flight += 1
            self._wake_next()

    def _wake_next(self) -> None:
        for high_priority in (True, False):
            queue = self._waiting[high_priority]
            if queue:
                queue.popleft().set()
                return

    def release(self) -> None:
        """A request left flight: its slot goes to the next waiter, else is freed (also when
        the limit was made smaller and is still exceeded)."""
        if self.limit is None:
            return
        if self.waiting and self.in_flight <= self.limit:
            self._wake_next()  # the slot passes on: in_flight unchanged
            return
        self.in_flight -= 1


async def take_budget_slot(
    budget: FleetBudget, dispatch: Dispatch, stopping: Callable[[], bool]
) -> bool:
    """Wait for a slot of the fleet's budget for ``dispatch``; returns whether its task is
    still to be sent then. It is not if it ended, if the gateway is ``stopping``, or if its
    job holds sending (the task goes back to its job: ``TaskHeldBack``); the slot is freed
    then. A task that has to wait tells its job first (``waiting: "fleet-budget"``, cleared
    when it is sent). Called only with a budget."""
    task = dispatch.task
    if not budget.free_for(dispatch.high_priority) and task.waiting != "fleet-budget":
        # Stored with the task, once per wait (not each time the budget moves).
        try:
            await dispatch.reports.tell(TaskWaiting(task.id, "fleet-budget"))
        except ActorStopped:
            return False  # its job ended meanwhile: nothing to send
    await budget.acquire(dispatch.high_priority)
    if task.final or stopping():
        budget.release()
        return False
    if dispatch.gate is not None and dispatch.gate.held and task.status == "pending":
        budget.release()
        try:
            await dispatch.reports.tell(TaskHeldBack(task.id))
        except ActorStopped:
            pass  # its job ended meanwhile
        return False
    return True
