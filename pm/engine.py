"""The dispatch engine: the job table, the fleet of device actors, and their supervisors.

:func:`open_engine` runs it in a nursery of its own; the HTTP layer and the CLI only call
:meth:`Engine.submit`, :meth:`Engine.get`, :meth:`Engine.list` and :meth:`Engine.delete`.

Every job and task change is recorded in the :class:`~pm.store.Store`; on start, the engine
resumes the jobs the store holds unfinished (:meth:`Engine.recover`).

Restart policy: a job actor that raises is stopped and its job ends ``cancelled`` (logged
with the error); a device actor that raises is handled by :class:`~pm.devices.Fleet`.
Neither touches other jobs or devices. When the engine's scope is cancelled (shutdown),
running jobs stop where they are, unfinished in the store, and resume at the next start. A
graceful stop first calls :meth:`Engine.stop_dispatching` (nothing new is sent) and
:meth:`Engine.settle` (answers on their way are applied), so what devices answered is stored.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, cast

import trio

from actors import Directive, Failure, Supervisor

from .config import Config
from .config_topics import topic_templates
from .devices import Fleet, Publisher
from .engine_control import JobControl, refuse_if_elsewhere
from .engine_retention import JobRetention
from .job_contract import JobStateError as JobStateError
from .job_limits import DataTooLarge as DataTooLarge
from .job_limits import JobRefused as JobRefused
from .job_limits import TooManyJobsRunning as TooManyJobsRunning
from .job_limits import TooManyTasks as TooManyTasks
from .job_limits import check_limits
from .job_recovery import resume_unfinished
from .jobs import Job
from .presence import PresenceBook
from .schemas import JobRequest, JobView, TaskView
from .state import JobRecord, TaskSelection, expand_batch, expires_in_default
from .status_topic import DeviceMessages, StatusTopicSource
from .store import Store, StoreUnavailable, open_store

logger = logging.getLogger(__name__)

# Reports a job buffers from its devices before they wait for it.
JOB_MAILBOX = 4096


class Engine(JobControl, JobRetention):
    """Jobs by id, and the fleet they dispatch to. Create with :func:`open_engine`.

    ``wall_clock`` gives epoch seconds (``createdAt``, ``finishAt``, job timeouts across a
    restart, retention); timeouts while running are on trio's clock. Tests pass a wall clock
    that follows trio's virtual one.
    """

    def __init__(
        self,
        config: Config,
        nursery: trio.Nursery,
        publisher: Publisher,
        store: Store,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.wall_clock = wall_clock
        self.topics = topic_templates(config)
        # Presence of every device ever seen, as the store last had it; fed by the status
        # topic (pm/status_topic.py), which the embedded amqtt broker also publishes on. The
        # fleet holds a device's tasks back while it is offline.
        self.presence = PresenceBook(on_change=store.presence_changed)
        self.presence.restore(store.load_presences())
        self.fleet = Fleet(
            nursery,
            publisher,
            self.topics,
            mailbox_size=config.tasks.device_mailbox,
            idle_timeout=config.tasks.device_idle_retire,
            max_answer_bytes=config.limits.max_answer_bytes,
            max_answer_depth=config.limits.max_json_depth,
            resend_on_reconnect=config.tasks.resend_on_reconnect,
            presence=self.presence,
            wall_clock=wall_clock,
            max_in_flight=config.tasks.max_in_flight or None,
        )
        self.status_topic = StatusTopicSource(
            self.presence, self.topics, self.fleet.dropped, wall_clock=wall_clock
        )
        # Every message the MQTT client receives: statuses, answers, anything else.
        self.on_mqtt_message = DeviceMessages(self.topics, self.status_topic, self.fleet).route
        self._job_supervisor = Supervisor(nursery, self._on_job_failure)
        self._jobs: dict[int, Job] = {}
        # Finished jobs still in memory, oldest first, with their task counts.
        self._finished: deque[tuple[int, int]] = deque()
        self._finished_tasks = 0

    # -- jobs ----------------------------------------------------------------------------

    async def submit(self, request: JobRequest) -> Job:
        """Create a job from a validated request and start its actor.

        Waits only in the rare case the store must reserve a new block of ids.

        Error handling: raises a :class:`JobRefused` subclass, before anything is created,
        when the request exceeds one of ``config.limits``, and
        :class:`~pm.store.StoreUnavailable` while the store cannot commit (a job it could
        not persist would be lost by a restart, and its results with it).
        """
        if self.store.fault is not None:
            raise StoreUnavailable(
                f"new jobs are refused while the job store cannot write ({self.store.fault}); "
                "running jobs go on and reads still work; retry when GET /readyz answers 200"
            )
        total = check_limits(request, self.config.limits, self.jobs_running)
        job_id, first_task_id = await self.store.allocate_ids(1, total)
        now = self.wall_clock()
        tasks = expand_batch(
            job_id,
            request.batch,
            next_task_id=itertools.count(first_task_id).__next__,
            tunnel_for=self.topics.response_topic,
            default_timeout=self.config.tasks.default_timeout,
            default_expires_in=expires_in_default(
                request.expires_in, self.config.tasks.default_expires_in
            ),
            now=now,
        )
        record = JobRecord(job_id, tasks, request.timeout, now, request.options)
        self.store.job_created(record, request.batch)
        deadline = math.inf if request.timeout is None else trio.current_time() + request.timeout
        # One line per job (never per task): dispatch throughput must not pay for logging.
        logger.info(
            "job %d created: %d tasks, timeout %s",
            job_id,
            total,
            request.timeout,
            extra={"job_id": job_id, "total_count": total, "timeout": request.timeout},
        )
        return self._start(record, deadline)

    def recover(self) -> int:
        """Resume the jobs the store holds unfinished; returns how many were resumed.

        What happens to their tasks is :mod:`pm.job_recovery`'s policy: pending tasks are
        dispatched again in order, in-flight ones re-sent once with the same id when their
        device is first seen (or ended ``error``), a job whose timeout passed meanwhile ends
        ``timeout``.
        """
        return resume_unfinished(
            self.store,
            resend_inflight=self.config.recovery.resend_inflight,
            tunnel_for=self.topics.response_topic,
            wall_clock=self.wall_clock,
            start=self._start,
        )

    def _start(self, record: JobRecord, deadline: float) -> Job:
        job = Job(
            record,
            self.fleet,
            self.store,
            watchers=self.config.watchers,
            wall_clock=self.wall_clock,
        )

        async def run(inbox: trio.MemoryReceiveChannel[Any]) -> None:
            await job.run(inbox, deadline)

        job.ref = self._job_supervisor.spawn(
            f"job:{record.id}",
            run,
            capacity=JOB_MAILBOX,
            key=record.id,
            on_exit=lambda: self._job_ended(job),
        )
        self._jobs[record.id] = job
        return job

    def jobs(self) -> Iterator[Job]:
        """The jobs held in memory (running, and the most recent finished ones)."""
        return iter(self._jobs.values())

    def get(self, job_id: int) -> Job | None:
        """A job held in memory (running, or finished recently)."""
        return self._jobs.get(job_id)

    async def find(self, job_id: int) -> Job | None:
        """A job from memory, else from the store (read-only: finished, or run by another
        gateway)."""
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        await self.store.sync_for_reading()
        record = await self.store.load_job(job_id, self.topics.response_topic)
        if record is None:
            return None
        job = Job(
            record,
            self.fleet,
            self.store,
            watchers=self.config.watchers,
            feed_capacity=1 if record.final else None,
            wall_clock=self.wall_clock,
        )
        if record.final:  # its watchers get its final snapshot and the close
            job.feed.close()
            job.ended.set()
        return job

    async def list_tasks(
        self, job_id: int, selection: TaskSelection
    ) -> tuple[list[TaskView], int] | None:
        """One page of a job's tasks and how many match in all; ``None``: no such job. A job
        in memory is read there; a stored one a page at a time from the store, never whole."""
        job = self._jobs.get(job_id)
        if job is not None:
            return job.record.select_tasks(selection)
        await self.store.sync_for_reading()
        return await self.store.load_task_page(job_id, selection, self.topics.response_topic)

    async def list(
        self, *, limit: int = 100, offset: int = 0, **filters: str | None
    ) -> tuple[list[JobView], int]:
        """Jobs newest first, a page and the total; ``filters``: ``status``, ``outcome``.

        While the store cannot commit, the page comes from what it last committed, with the
        jobs still held in memory shown as they are now.
        """
        await self.store.sync_for_reading()
        views, total = await self.store.list_jobs(limit=limit, offset=offset, **filters)
        if self.store.fault is not None:
            views = [
                self._jobs[view.id].record.view() if view.id in self._jobs else view
                for view in views
            ]
        return views, total

    async def delete(self, job_id: int, *, with_tasks: bool = False) -> JobView | None:
        """Cancel the job if it runs, forget it (store included), return its final snapshot:
        its collection holds task ids, or the final tasks with ``with_tasks``."""
        job = await self.find(job_id)
        if job is None:
            return None
        refuse_if_elsewhere(job, "DELETE")
        view = await job.cancel()
        if with_tasks:
            view = job.record.view(collection="tasks")
        self._jobs.pop(job_id, None)
        self.store.job_deleted(job_id)
        return view

    @property
    def jobs_running(self) -> int:
        return self._job_supervisor.running

    def __len__(self) -> int:
        return len(self._jobs)

    def _on_job_failure(self, failure: Failure[Any]) -> Directive:
        # The supervisor logs the traceback; this line says what it means for the job.
        job_id = cast(int, failure.key)  # spawned with key=record.id
        logger.error(
            "job %d: its actor failed (%r); the job ends cancelled",
            job_id,
            failure.error,
            extra={"job_id": job_id, "error": repr(failure.error)},
        )
        return Directive.STOP

    # -- shutdown --------------------------------------------------------------------------

    def stop_dispatching(self) -> None:
        """Shutdown begins: no request leaves for a device from now on. Jobs keep taking
        answers to what is in flight until :meth:`settle` returns."""
        self.fleet.stop_publishing()

    async def settle(self, grace: float) -> int:
        """After :meth:`stop_dispatching`: wait up to ``grace`` seconds for the requests in
        flight to be answered, then until every running job has applied the reports it was
        sent, so the store's last commit holds every answer that arrived. Returns how many
        requests were still unanswered (they are re-sent at the next start)."""
        with trio.move_on_after(grace):
            await self.fleet.wait_nothing_in_flight()
        unanswered = self.fleet.in_flight
        for job in list(self._jobs.values()):
            await job.apply_reports(timeout=max(grace, 1.0))
        logger.info(
            "dispatch stopped: %d requests in flight left unanswered after %g s",
            unanswered,
            grace,
            extra={"in_flight": unanswered, "grace": grace},
        )
        return unanswered

    # -- MQTT hooks ----------------------------------------------------------------------

    def on_mqtt_connect(self, generation: int) -> None:
        if generation > 1:
            due = self.fleet.resend_after_reconnect()
            # The MQTT client logs the reconnect itself; this says what the engine does about it.
            logger.info(
                "broker connection back (generation %d): %d of %d in-flight requests re-sent"
                " (those of offline devices go when they return)",
                generation,
                due,
                self.fleet.in_flight,
                extra={"generation": generation, "in_flight": self.fleet.in_flight, "resent": due},
            )


@asynccontextmanager
async def open_engine(
    config: Config,
    publisher: Publisher,
    store: Store | None = None,
    *,
    wall_clock: Callable[[], float] = time.time,
    engine_type: type[Engine] = Engine,
) -> AsyncIterator[Engine]:
    """Run an engine until the block exits; its jobs and device actors stop with it.

    Args:
      store: an open store whose actor (``store.run``) the caller runs and outlives the
        engine; ``None`` opens and runs one here from ``config.store``.
      wall_clock: epoch seconds (see :class:`Engine`).
      engine_type: ``pm.cluster_engine.ClusterEngine`` with ``cluster.enabled``.

    Unfinished jobs in the store are resumed before the engine is handed out.
    """
    own_store = store is None
    if store is None:
        store = await open_store(
            config.store.location, commit_interval=config.store.commit_interval
        )
    try:
        async with trio.open_nursery() as outer:
            if own_store:
                await outer.start(store.run)
            async with trio.open_nursery() as nursery:
                engine = engine_type(config, nursery, publisher, store, wall_clock=wall_clock)
                engine.recover()
                nursery.start_soon(engine.run_retention, name="retention")
                try:
                    yield engine
                finally:
                    nursery.cancel_scope.cancel()
            # The engine has stopped: now the store actor makes its last commit and ends.
            outer.cancel_scope.cancel()
    finally:
        if own_store:
            store.close()
