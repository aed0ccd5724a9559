"""Watchers of a job that another gateway runs: its changes come from the database.

A job posted to one gateway of a cluster runs there (its actor, its :class:`~pm.watch.JobFeed`
fed by that actor); any other gateway finds it only in the shared store. For a watcher of such
a job, :func:`follow_stored_job` feeds the same :class:`~pm.watch.JobFeed` from the database
instead: it looks at the job's committed rows every ``interval`` seconds
(:meth:`pm.store.Store.look_at_job`), replaces the feed's snapshot with the job row's view
when it changed, logs each changed task as a task change, and closes the feed once the job
row is final (or gone). The watchers, their messages and their protocol are the local ones
(:mod:`pm.watch`); what they see lags the job by up to the owner's ``store.commit_interval``
plus ``interval``. Each watcher has its own follower (watchers of one job do not share looks
yet); a watcher of snapshots only reads the job row.

What differs from a local job's feed: the snapshots are the job row's (as ``GET /jobs``
lists it; its ``retriedCount``, ``rollout`` and ``abort`` figures made from the row's
job-wide counts: pm/job_wide_view.py), and a task that changed several times between two
looks is one task message (its latest state), as a watcher that lags locally also
coalesces.

Error handling: a look the store cannot make (a storage fault) is retried at the next
interval, logged once per outage; the watcher meanwhile keeps its last state. Anything
else raises into the watcher's nursery (the route closes the WebSocket with 1011).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from .jobs import Job
from .schemas import FINAL_JOB_STATUSES, JobView
from .store import Store, StoreUnavailable

logger = logging.getLogger(__name__)

# Seconds between two looks at least, whatever the watcher asked (coalesce_interval 0
# means "at once" for a local job; from the database it would mean a query loop).
MIN_LOOK_INTERVAL = 0.05


async def follow_stored_job(
    store: Store,
    job: Job,
    *,
    interval: float,
    tunnel_for: Callable[[str], str],
    with_tasks: bool = True,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Feed ``job.feed`` from the database until the job is final; see the module docstring.

    Args:
      job: a job read from the store (:meth:`pm.engine.Engine.find`) that is not final.
      interval: seconds between two looks (at least :data:`MIN_LOOK_INTERVAL`).
      tunnel_for: a device's answer topic, for the task views.
      with_tasks: False for a watcher of snapshots only (``?tasks=none``): each look then
        reads the job row alone.

    Reports ``started`` after the first look, so the watcher's first snapshot is current.
    """
    feed = job.feed
    interval = max(interval, MIN_LOOK_INTERVAL)
    look = await store.look_at_job(job.id, (), with_tasks=with_tasks)
    if look is None:
        _end(job)
        task_status.started()
        return
    latest: JobView = look.view
    feed.snapshot = lambda: latest
    feed.job_changed()
    seen: dict[int, tuple[Any, ...]] = look.rows
    unsettled = look.unsettled
    task_status.started()
    failing = False
    while latest.status not in FINAL_JOB_STATUSES:
        await trio.sleep(interval)
        try:
            look = await store.look_at_job(job.id, unsettled, with_tasks=with_tasks)
            if look is None:
                break  # deleted: the watchers get the last state seen, then the close
            changed = [row for task_id, row in look.rows.items() if seen.get(task_id) != row]
            tasks = await store.tasks_of_rows(job.id, changed, tunnel_for) if changed else []
        except StoreUnavailable as error:
            if not failing:
                logger.warning("job %d: cannot follow it in the store: %s", job.id, error)
            failing = True
            continue
        failing = False
        for task in tasks:
            feed.task_changed(task.view)
        seen, unsettled = look.rows, look.unsettled
        if look.view != latest:
            latest = look.view
            feed.job_changed()
    _end(job)


def _end(job: Job) -> None:
    job.feed.close()
    job.ended.set()
