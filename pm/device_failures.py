"""What a device actor's failure costs its tasks: each one it held, in flight or queued, ends
``error`` with a result naming the failure (the restart policy of :class:`pm.devices.Fleet`).

Error handling: a report whose job has ended is dropped (the job's final state covers it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from actors import ActorRef, ActorStopped

from .task_machine import TaskReport, TaskSettled

if TYPE_CHECKING:
    from .devices import Dispatch

logger = logging.getLogger("pm.devices")


def fail_device_tasks(
    nursery: trio.Nursery, device: str, error: BaseException, doomed: Sequence[Dispatch]
) -> None:
    """The actor of ``device`` failed with ``error``: the unfinished tasks of ``doomed`` (its
    current one first) end ``error``; reports go out from tasks started in ``nursery``."""
    reason = {"error": f"device actor failed: {error!r}"}
    # The supervisor logs the traceback; these lines say which tasks it cost.
    logger.error(
        "device actor %s failed (%r): its %d tasks end error",
        device,
        error,
        len(doomed),
        extra={"device": device, "error": repr(error), "failed_tasks": len(doomed)},
    )
    for dispatch in doomed:
        task = dispatch.task
        if task.final:
            continue  # its job ended: the task keeps the status the job gave it
        logger.warning(
            "task %d of job %d on device %s: error, the device actor failed",
            task.id,
            task.job_id,
            device,
            extra={
                "job_id": task.job_id,
                "task_id": task.id,
                "device": device,
                "status": "error",
                "error": repr(error),
            },
        )
        # A policy is synchronous: the report goes out from a task of its own, which
        # waits if the job's mailbox is full (never lost) and gives up if the job ended.
        nursery.start_soon(_report_quietly, dispatch.reports, TaskSettled(task.id, "error", reason))


async def _report_quietly(reports: ActorRef[TaskReport], report: TaskReport) -> None:
    try:
        await reports.tell(report)
    except ActorStopped:
        pass  # the job ended meanwhile; its final state already covers this task
