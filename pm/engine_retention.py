"""How long finished jobs are kept: in memory (``tasks.max_finished_tasks``) and in the store
(``store.retention``).

A mixin of :class:`pm.engine.Engine`. A job that ends stays in memory, for reads and
watchers, until the finished jobs held exceed ``tasks.max_finished_tasks`` tasks (oldest
forgotten first; the store still has them). The retention actor deletes from the store, every
``store.retention_interval`` seconds, the finished jobs older than ``store.retention``.

Error handling: a sweep the store cannot run (:class:`~pm.store.StoreUnavailable`) is
skipped and logged, never fatal; the next one runs at its time.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import trio

from .config import Config
from .jobs import Job
from .store import Store, StoreUnavailable

logger = logging.getLogger("pm.engine")


class JobRetention:
    """Finished jobs in memory and in the store (see the module docstring). The attributes
    below are set by :class:`pm.engine.Engine`."""

    config: Config
    store: Store
    wall_clock: Callable[[], float]
    _jobs: dict[int, Job]
    # Finished jobs still in memory, oldest first, with their task counts.
    _finished: deque[tuple[int, int]]
    _finished_tasks: int

    async def run_retention(self) -> None:
        """The retention actor: delete finished jobs older than ``store.retention``.

        Error handling: a sweep the store cannot run (a storage fault) is skipped, not fatal.
        """
        while True:
            cutoff = self.wall_clock() - self.config.store.retention
            try:
                deleted = await self.store.delete_finished_before(cutoff)
            except StoreUnavailable as error:
                # The store retries its own commits; the sweep waits for its next turn.
                logger.warning("retention skipped: %s", error)
                await trio.sleep(self.config.store.retention_interval)
                continue
            for job_id in [i for i, job in self._jobs.items() if _finished_before(job, cutoff)]:
                del self._jobs[job_id]
            if deleted:
                logger.info("retention: deleted %d finished jobs", deleted)
            await trio.sleep(self.config.store.retention_interval)

    def _job_ended(self, job: Job) -> None:
        if job.id not in self._jobs:
            return
        tasks = len(job.record.tasks)
        self._finished.append((job.id, tasks))
        self._finished_tasks += tasks
        # Keep memory bounded: forget the oldest finished jobs beyond the configured number
        # of tasks (the store has them). A job deleted meanwhile still counts until popped:
        # the bound errs on the side of holding less.
        while self._finished_tasks > self.config.tasks.max_finished_tasks:
            job_id, tasks = self._finished.popleft()
            self._finished_tasks -= tasks
            self._jobs.pop(job_id, None)


def _finished_before(job: Job, cutoff: float) -> bool:
    return job.record.finish_at is not None and job.record.finish_at < cutoff
