"""A job's batch expanded into its tasks: one per entry x destination (re-exported by
:mod:`pm.state`)."""

from __future__ import annotations

import math
from collections.abc import Callable

from .schemas import BatchEntry
from .task_record import TaskRecord


def expires_in_default(job_expires_in: float | None, configured: float) -> float | None:
    """The ``expiresIn`` of a job's entries that set none: the job's own, else the
    configured ``tasks.default_expires_in`` (``inf``: none)."""
    if job_expires_in is not None:
        return job_expires_in
    return None if math.isinf(configured) else configured


def expand_batch(
    job_id: int,
    batch: list[BatchEntry],
    *,
    next_task_id: Callable[[], int],
    tunnel_for: Callable[[str], str],
    default_timeout: float,
    now: float,
    default_expires_in: float | None = None,
) -> list[TaskRecord]:
    """One task per entry x destination, in entry order then destination order.

    Args:
      next_task_id: returns a fresh task id per call.
      tunnel_for: the answer topic of a device.
      default_expires_in: ``expiresIn`` of entries that set none (the job's, else the
        ``[tasks]`` default), ``None`` for no expiry.
      now: ``createdAt`` of every task, epoch seconds (the caller's wall clock).
    """
    created_at = now
    tasks = []
    for position, entry in enumerate(batch):
        timeout = default_timeout if entry.timeout is None else entry.timeout
        expires_in = default_expires_in if entry.expires_in is None else entry.expires_in
        expires_at = None if expires_in is None else created_at + expires_in
        for device in entry.devices:
            tasks.append(
                TaskRecord(
                    task_id=next_task_id(),
                    job_id=job_id,
                    entry=position,
                    device=device,
                    method=entry.method,
                    resource=entry.resource,
                    data=entry.data,
                    tunnel=tunnel_for(device),
                    timeout=timeout,
                    created_at=created_at,
                    expires_at=expires_at,
                )
            )
    return tasks
