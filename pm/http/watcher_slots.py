"""How many WebSocket watchers each job has, bounded by ``limits.max_watchers_per_job``.

Pure bookkeeping, no I/O: the watch handler claims a slot before it accepts the handshake.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .metrics import HttpCounters


class WatcherSlots:
    """Open WebSocket watchers per job, bounded by ``limits.max_watchers_per_job``.

    Kept here rather than on the job: a finished job read back from the store is a fresh
    object per request, and its watchers must count against the same job id.
    """

    def __init__(self, per_job: int, counters: HttpCounters) -> None:
        self._per_job = per_job
        self._counters = counters
        self._by_job: dict[int, int] = {}

    @contextmanager
    def claim(self, job_id: int) -> Iterator[bool]:
        """Yields whether a slot was free; a claimed slot is released on exit."""
        held = self._by_job.get(job_id, 0)
        if held >= self._per_job:
            yield False
            return
        self._by_job[job_id] = held + 1
        self._counters.watchers += 1
        try:
            yield True
        finally:
            self._counters.watchers -= 1
            remaining = self._by_job[job_id] - 1
            # Deleted at zero: the table holds only jobs being watched, never every job ever.
            if remaining:
                self._by_job[job_id] = remaining
            else:
                del self._by_job[job_id]
