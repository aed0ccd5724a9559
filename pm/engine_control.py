"""Control of running jobs: pause, resume and a graceful cancel (the engine's part of them).

A mixin of :class:`pm.engine.Engine`: each request goes to the job's actor, which alone
changes its job (:mod:`pm.job_rollout`), and comes back as the job's snapshot.

Error handling: a job the request does not suit (finished, not paused, already paused or
stopping, or run by another gateway of a cluster) raises
:class:`~pm.job_contract.JobStateError` with a sentence saying why (the HTTP layer answers
409); an unknown job gives ``None`` (404).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from actors import ActorStopped

from .job_contract import ClearHold, JobStateError, Refused, SetHold, StopJob
from .jobs import Job
from .schemas import JobView


class JobControl:
    """Pause, resume and cancel by job id (mixed into :class:`pm.engine.Engine`)."""

    async def find(self, job_id: int) -> Job | None:
        raise NotImplementedError  # the engine's

    async def pause(self, job_id: int) -> JobView | None:
        """Pause a running job: nothing new is sent, tasks in flight finish. ``None``: no
        such job. Error handling: :class:`JobStateError` if it is finished or paused."""
        return await self._ask(job_id, lambda reply: SetHold("paused", reply))

    async def resume(self, job_id: int) -> JobView | None:
        """Resume a paused job (by a user or an abort criterion with ``action: pause``).
        Error handling: :class:`JobStateError` if it is finished or not paused."""
        return await self._ask(job_id, lambda reply: ClearHold("paused", reply))

    async def cancel(self, job_id: int) -> JobView | None:
        """Cancel gracefully: tasks not sent end ``cancelled``, tasks in flight finish, and the
        job ends ``cancelled`` once they have; it stays readable (unlike :meth:`delete`).
        Returns the snapshot at once. Error handling: :class:`JobStateError` if it is
        finished or already stopping."""
        return await self._ask(job_id, StopJob)

    async def _ask(self, job_id: int, message: Callable[[Any], Any]) -> JobView | None:
        job = await self.find(job_id)
        if job is None:
            return None
        refuse_if_elsewhere(job, "this")
        if job.final or job.ref is None:
            raise JobStateError(f"job {job_id} is {job.record.status}: it has finished")
        try:
            answer = await job.ref.ask(message, timeout=30)
        except ActorStopped:
            raise JobStateError(f"job {job_id} is {job.record.status}: it has finished") from None
        if isinstance(answer, Refused):
            raise JobStateError(answer.message)
        return cast(JobView, answer)


def refuse_if_elsewhere(job: Job, action: str) -> None:
    """Refuse to control a job another gateway runs: only its actor changes it, and it runs
    there. (The job row names no owner yet: the client asks the gateway it posted it to.)

    Error handling: raises :class:`JobStateError` (409) saying so.
    """
    if job.runs_elsewhere:
        raise JobStateError(
            f"job {job.id} is {job.record.status} on another gateway, not this one: send "
            f"{action} request to the gateway that runs it (the one it was posted to), or "
            "wait until it has finished"
        )
