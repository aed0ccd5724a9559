"""The ``[limits]`` a job request must fit before anything of it is created.

Pure: a request, the limits and the number of jobs running in, a task count or a refusal
out. :class:`~pm.engine.Engine` checks every request here first; the API turns each refusal
into its status code by its type.
"""

from __future__ import annotations

import msgspec

from .config import LimitsConfig
from .schemas import JobRequest

_data_encoder = msgspec.json.Encoder()


class JobRefused(Exception):
    """A valid request that a configured limit (``[limits]``) refuses; the message names the
    limit. Nothing was created. The subclass says which kind, for the API's status code."""


class TooManyTasks(JobRefused):
    """The job would have more than ``limits.max_tasks_per_job`` tasks."""


class DataTooLarge(JobRefused):
    """A batch entry's ``data`` encodes to more than ``limits.max_data_bytes``."""


class TooManyJobsRunning(JobRefused):
    """``limits.max_jobs_running`` jobs are running already; try again when one ends."""


def check_limits(request: JobRequest, limits: LimitsConfig, jobs_running: int) -> int:
    """The job's task count, once the request is known to fit ``limits``.

    Error handling: raises the :class:`JobRefused` subclass of the first limit exceeded.
    """
    # Checked before the other limits: it is the one a client can only wait out.
    if jobs_running >= limits.max_jobs_running:
        raise TooManyJobsRunning(
            f"{jobs_running} jobs are running, the most allowed at once "
            f"(limits.max_jobs_running = {limits.max_jobs_running}); retry when one ends"
        )
    total = sum(len(entry.devices) for entry in request.batch)
    if total > limits.max_tasks_per_job:
        raise TooManyTasks(
            f"the job would have {total} tasks, more than limits.max_tasks_per_job = "
            f"{limits.max_tasks_per_job}: split it into several jobs"
        )
    for position, entry in enumerate(request.batch):
        # Encoded once more here: the size that matters is what goes to each device.
        size = len(_data_encoder.encode(entry.data))
        if size > limits.max_data_bytes:
            raise DataTooLarge(
                f"`$.batch[{position}].data` is {size} bytes of JSON, more than "
                f"limits.max_data_bytes = {limits.max_data_bytes}"
            )
    return total
