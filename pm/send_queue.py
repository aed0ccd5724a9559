"""A job's tasks not yet handed to their devices, in the order they go, and its pacing.

Owned by one job actor (:mod:`pm.jobs`): its feeder takes tasks from here and its aggregator
puts back what returns (a task held back while the job was paused, a failed attempt to be
retried after its backoff) and pokes the feeder when something changed. Both are tasks of
the same actor on the trio thread, so nothing here is shared across threads; the only trio
in it is the feeder's wait (:meth:`SendQueue.wait_for_work`).

Order: tasks held back go first (they had their turn), then retries whose backoff is over,
then the job's tasks in job order.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable

import trio

from .rollout import Pacer
from .schemas import WaitingReason
from .state import TaskRecord


class SendQueue:
    """What the feeder hands out next, and when.

    Args:
      tasks: the job's unsettled tasks in job order (a resumed job's pending ones with a
        ``next_attempt_at`` wait for it: see ``retry_waits``).
      pacer: the job's window and rate, or ``None`` for none.
      retry_waits: tasks waiting for a retry and the trio time each may go.
    """

    def __init__(
        self,
        tasks: Iterable[TaskRecord],
        pacer: Pacer | None,
        retry_waits: Iterable[tuple[float, TaskRecord]] = (),
    ) -> None:
        self.pacer = pacer
        self._fresh: deque[TaskRecord] = deque(tasks)
        self._returned: deque[TaskRecord] = deque()
        self._backoff: list[tuple[float, int, TaskRecord]] = [
            (at, task.id, task) for at, task in retry_waits
        ]
        heapq.heapify(self._backoff)
        # Ids of tasks handed to their devices and not back (settled or returned): what
        # counts against the window. Tracked only for a paced job.
        self._at_device: set[int] = set()
        # Ids of tasks held back and not handed out since (a paced job's; see put_back).
        self._held_back_ids: set[int] = set()
        self._wake = trio.Event()

    def __len__(self) -> int:
        return len(self._fresh) + len(self._returned) + len(self._backoff)

    def waiting(self) -> Iterable[TaskRecord]:
        """Every task not handed out (in no particular order)."""
        yield from self._returned
        yield from (task for _, _, task in self._backoff)
        yield from self._fresh

    def queued_reason(self, task: TaskRecord) -> WaitingReason | None:
        """Why ``task`` (pending, with no reason of its own) waits, read now: the pacer's
        (window, then rate) if it is still here; ``None`` if it was handed out, or nothing
        stops the next send."""
        if self.pacer is None or task.id in self._at_device:
            return None
        return self.pacer.blocked(trio.current_time())

    def take(self) -> TaskRecord | None:
        """The next task to hand out now, or ``None`` if none is ready."""
        if self._returned:
            return self._returned.popleft()
        # trio's clock is read only while a retry waits (the default path never does).
        if self._backoff and self._backoff[0][0] <= trio.current_time():
            return heapq.heappop(self._backoff)[2]
        if self._fresh:
            return self._fresh.popleft()
        return None

    def hand_fresh_elsewhere(self) -> None:
        """The job's tasks in job order are handed out by someone else (a clustered
        gateway's shard feeder, pm/shard_service.py); only what comes back goes from here."""
        self._fresh.clear()

    def put_back(self, task: TaskRecord) -> None:
        """``task`` was taken but may not go yet (pacing): it is the next one taken among
        those it was taken from. A fresh one goes back to the fresh tasks, not before the
        tasks held back: one held back meanwhile (by a pause) had its turn before it, and
        may be for the same device. (Told apart here, not in :meth:`take`: a paced job's
        rare path, not every job's per-task one.)"""
        if task.id in self._held_back_ids or task.attempts:
            self._returned.appendleft(task)  # held back, or a retry due: first of all
        else:
            self._fresh.appendleft(task)

    def held_back(self, task: TaskRecord) -> None:
        """``task`` was handed out and came back unsent (its job held sending)."""
        self._left_device(task)
        if self.pacer is not None:
            self._held_back_ids.add(task.id)
        self._returned.append(task)
        self.poke()

    def retry_at(self, task: TaskRecord, at: float) -> None:
        """A failed attempt of ``task``: it goes again at trio time ``at``."""
        self.settled(task, resolved=False)
        heapq.heappush(self._backoff, (at, task.id, task))
        self.poke()

    def handed_out(self, task: TaskRecord, now: float) -> None:
        if self.pacer is not None:
            self.pacer.on_handed_out(now)
            self._at_device.add(task.id)
            self._held_back_ids.discard(task.id)

    def settled(self, task: TaskRecord, *, resolved: bool) -> bool:
        """``task``'s attempt has its outcome (or ended while queued). Returns whether the
        ramp took a step."""
        if self.pacer is None or task.id not in self._at_device:
            return False
        self._at_device.discard(task.id)
        self.poke()
        return self.pacer.on_settled(resolved)

    def _left_device(self, task: TaskRecord) -> None:
        if self.pacer is not None and task.id in self._at_device:
            self._at_device.discard(task.id)
            self.pacer.on_returned()

    def poke(self) -> None:
        """Something changed: a feeder waiting for work looks again."""
        self._wake.set()

    async def wait_for_work(self, until: float = math.inf) -> None:
        """Wait until poked, the next retry is due, or trio time ``until``."""
        if self._backoff:
            until = min(until, self._backoff[0][0])
        # A fresh event: pokes before this point are already reflected in what the feeder
        # saw (the aggregator runs only while the feeder waits).
        self._wake = trio.Event()
        with trio.move_on_at(until):
            await self._wake.wait()
