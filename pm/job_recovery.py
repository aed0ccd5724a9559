"""Resuming the jobs a stopped gateway left unfinished in the store.

Pending tasks are dispatched again in their original order, keeping their ``expiresAt``
(counted from creation); tasks that were in flight stay ``sent`` and are sent once more with
the same id when their device is first seen (devices answer a repeated id without doing the
work twice; see :mod:`pm.in_flight`), their timeout still counting from their first send; or
they end ``error`` if ``recovery.resend_inflight`` is false. The job timeout still counts from
``createdAt``: a job whose timeout passed while the gateway was down ends ``timeout`` now.

Called once, at start, by :meth:`pm.engine.Engine.recover`, before the engine is handed out.
Error handling: none here; a store that cannot be read at start ends the start.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from .state import JobRecord
from .store import Store

logger = logging.getLogger(__name__)

RESTARTED_IN_FLIGHT = "the gateway restarted while this task was in flight"


def resume_unfinished(
    store: Store,
    *,
    resend_inflight: bool,
    tunnel_for: Callable[[str], str],
    wall_clock: Callable[[], float],
    start: Callable[[JobRecord, float], object],
) -> int:
    """Settle what the downtime decided, then start each job still unfinished.

    Args:
      store: where the unfinished jobs are read and their changes recorded.
      resend_inflight: ``recovery.resend_inflight``: re-send tasks that were in flight
        (true) or end them ``error`` with :data:`RESTARTED_IN_FLIGHT` (false).
      tunnel_for: a device's answer topic, for the tasks read back.
      wall_clock: epoch seconds (a job timeout counts from its ``createdAt``).
      start: starts a job's actor given its record and its deadline on trio's clock.

    Returns:
      How many jobs were resumed.
    """
    resumed = 0
    for record in store.load_unfinished(tunnel_for):
        now = wall_clock()
        if record.timeout is not None and record.created_at + record.timeout <= now:
            for task in record.finish("timeout", now):
                store.task_changed(task)
        elif not resend_inflight:
            for task in record.tasks:
                if task.status == "sent":
                    record.settle(task, "error", {"error": RESTARTED_IN_FLIGHT}, now)
                    store.task_changed(task)
        store.job_changed(record)
        if record.final:
            continue
        remaining = math.inf if record.timeout is None else record.created_at + record.timeout - now
        start(record, trio.current_time() + remaining)
        resumed += 1
        logger.info(
            "job %d resumed: %d of %d tasks unsettled",
            record.id,
            len(record.tasks) - record.done_count,
            len(record.tasks),
            extra={
                "job_id": record.id,
                "total_count": len(record.tasks),
                "done_count": record.done_count,
            },
        )
    return resumed
