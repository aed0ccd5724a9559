"""The dispatch engine: the job table, the fleet of device actors, and their supervisors.

:func:`open_engine` runs it in a nursery of its own; the HTTP layer and the CLI only call
:meth:`Engine.submit`, :meth:`Engine.get`, :meth:`Engine.list` and :meth:`Engine.delete`.

Restart policy: a job actor that raises is stopped and its job ends ``cancelled`` (logged
with the error); a device actor that raises is handled by :class:`~pm.devices.Fleet`.
Neither touches other jobs or devices. When the engine's scope is cancelled (shutdown),
every running job ends ``cancelled``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from actors import Directive, Failure, Supervisor

from .config import Config
from .devices import Fleet, Publisher
from .jobs import Job
from .protocol import TopicTemplates
from .schemas import JobRequest, JobView
from .state import JobRecord, expand_batch

logger = logging.getLogger(__name__)

# Reports a job buffers from its devices before they wait for it.
JOB_MAILBOX = 4096


class Engine:
    """Jobs by id, and the fleet they dispatch to. Create with :func:`open_engine`."""

    def __init__(self, config: Config, nursery: trio.Nursery, publisher: Publisher) -> None:
        self.config = config
        self.topics = TopicTemplates(config.topics.request, config.topics.response)
        self.fleet = Fleet(
            nursery,
            publisher,
            self.topics,
            mailbox_size=config.tasks.device_mailbox,
            idle_timeout=config.tasks.device_idle_retire,
        )
        self._job_supervisor = Supervisor(nursery, self._on_job_failure)
        self._jobs: dict[int, Job] = {}
        self._finished: deque[int] = deque()
        self._job_ids = itertools.count(1)
        self._task_ids = itertools.count(1)

    # -- jobs ----------------------------------------------------------------------------

    def submit(self, request: JobRequest) -> Job:
        """Create a job from a validated request and start its actor. Never waits."""
        job_id = next(self._job_ids)
        now = time.time()
        tasks = expand_batch(
            job_id,
            request.batch,
            next_task_id=self._task_ids.__next__,
            tunnel_for=self.topics.response_topic,
            default_timeout=self.config.tasks.default_timeout,
            now=now,
        )
        job = Job(
            JobRecord(job_id, tasks, request.timeout, now),
            self.fleet,
            feed_capacity=self.config.watchers.queue_size,
            coalesce_interval=self.config.watchers.coalesce_interval,
        )
        deadline = math.inf if request.timeout is None else trio.current_time() + request.timeout

        async def run(inbox: trio.MemoryReceiveChannel[Any]) -> None:
            await job.run(inbox, deadline)

        job.ref = self._job_supervisor.spawn(
            f"job:{job_id}", run, capacity=JOB_MAILBOX, on_exit=lambda: self._job_ended(job)
        )
        self._jobs[job_id] = job
        return job

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def list(
        self, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[Job], int]:
        """Jobs newest first, optionally of one status; returns a page and the total."""
        matching = [
            job
            for job in reversed(self._jobs.values())
            if status is None or job.record.status == status
        ]
        return matching[offset : offset + limit], len(matching)

    async def delete(self, job_id: int) -> JobView | None:
        """Cancel the job if it runs, forget it, and return its final snapshot."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        view = await job.cancel()
        self._jobs.pop(job_id, None)
        return view

    @property
    def jobs_running(self) -> int:
        return self._job_supervisor.running

    def __len__(self) -> int:
        return len(self._jobs)

    def _job_ended(self, job: Job) -> None:
        if job.id not in self._jobs:
            return
        self._finished.append(job.id)
        # Keep memory bounded: forget the oldest finished jobs beyond the configured number.
        while len(self._finished) > self.config.tasks.max_finished_jobs:
            self._jobs.pop(self._finished.popleft(), None)

    def _on_job_failure(self, failure: Failure[Any]) -> Directive:
        logger.error("%s failed; it ends cancelled", failure.name, exc_info=failure.error)
        return Directive.STOP

    # -- MQTT hooks ----------------------------------------------------------------------

    def on_mqtt_message(self, topic: str, payload: bytes) -> None:
        self.fleet.on_answer(topic, payload)

    def on_mqtt_connect(self, generation: int) -> None:
        if generation > 1:
            self.fleet.republish_in_flight()


@asynccontextmanager
async def open_engine(config: Config, publisher: Publisher) -> AsyncIterator[Engine]:
    """Run an engine until the block exits; its jobs and device actors end with it."""
    async with trio.open_nursery() as nursery:
        engine = Engine(config, nursery, publisher)
        try:
            yield engine
        finally:
            nursery.cancel_scope.cancel()
