"""The engine of a gateway with ``cluster.enabled``: jobs are stored here and dispatched by
the gateways holding their devices' shards (pm/shard_dispatch.py), this one included.

What differs from :class:`pm.engine.Engine` (one gateway, every job in memory):

- :meth:`ClusterEngine.submit` stores the job (its tasks with their shards) and starts no
  actor for it: every gateway, this one too, finds it in the database within a commit window
  and dispatches its part. The answer to ``POST /jobs`` is the job as created.
- Nothing is resumed at start: each gateway reads the unfinished tasks of each shard as it
  gains the shard's lease.
- ``rollout`` (window, rate, ramp) holds job-wide: the gateway holding the lease of shard
  ``job_id % cluster.shards`` coordinates the job, granting each shard's part what it may
  send (pm/shard_pacing.py, pm/cluster/_grants.py), and a job's view shows its job-wide
  pacing from any gateway (:meth:`ClusterEngine.find`). ``tasks.max_in_flight`` is split
  between the gateways by the shards each serves (pm/shard_dispatch.py).
- Job-wide options not coordinated yet are refused (400 naming the field): ``abort``,
  ``retry``, ``schedule`` and ``priority: high`` would act per gateway. So are pause,
  resume and cancel of a job, and deleting one not finished (409): its parts run on other
  gateways, which this one cannot reach yet.

Restart and error policy: the gateway joins the cluster at start (:meth:`ClusterEngine.recover`):
a database it cannot reach, or whose cluster has another ``cluster.shards``, ends the start
with one line. Then the cluster's parts run in the engine's nursery: the lease keeper
(:class:`pm.cluster.LeaseKeeper`, its own policy) and the dispatcher
(:class:`pm.shard_dispatch.ShardDispatcher`, its own policy); anything else they raise is a
bug and ends the engine and the gateway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from .cluster import LeaseBook, LeaseKeeper, ShardCountMismatch, gateway_id_for
from .cluster._backfill import fill_missing_shards
from .cluster._writes import ClusterWrites
from .config import Config, ConfigError
from .devices import Publisher
from .engine import Engine
from .job_contract import JobStateError
from .job_limits import JobOptionRefused
from .jobs import Job
from .schemas import JobRequest, JobView
from .shard_dispatch import ShardDispatcher
from .state import JobRecord
from .store import Store, StoreOpenError
from .store._connection import Connection
from .store._postgres_connection import connect_postgres, driver_errors

logger = logging.getLogger(__name__)

# Job options that would act per gateway (see the module docstring), with their JSON names.
_PER_GATEWAY_OPTIONS = ("abort", "retry", "schedule")


class ClusterEngine(Engine):
    """An :class:`~pm.engine.Engine` whose jobs are dispatched by shard (module docstring)."""

    def __init__(
        self,
        config: Config,
        nursery: trio.Nursery,
        publisher: Publisher,
        store: Store,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(config, nursery, publisher, store, wall_clock=wall_clock)
        self.gateway_id = gateway_id_for(config.cluster)
        self.writes = ClusterWrites(self.gateway_id, config.cluster.shards)
        store.attach_cluster(self.writes)
        self._publisher = publisher
        self._nursery = nursery
        self.dispatcher: ShardDispatcher | None = None
        self.keeper: LeaseKeeper | None = None

    @property
    def jobs_running(self) -> int:
        """The cluster's unfinished jobs, as of the dispatcher's last poll (within a commit
        window): ``limits.max_jobs_running`` holds for the cluster, not each gateway."""
        return 0 if self.dispatcher is None else self.dispatcher.unfinished_jobs

    def recover(self) -> int:
        """Join the cluster (at start, before the gateway is ready, like a single gateway's
        recovery) and start its actors; nothing is resumed here: each shard's unfinished
        tasks are read when its lease is gained.

        Error handling: raises :class:`~pm.config.ConfigError` when the database's cluster
        has another ``cluster.shards``, :class:`~pm.store.StoreOpenError` when the database
        cannot be reached (``pm serve`` prints either as one line).
        """
        config = self.config
        url = config.store.url
        try:
            keeper_connection = connect_postgres(url)
        except driver_errors() as error:
            raise StoreOpenError(f"cluster: cannot connect to store.url: {error}") from error
        reader_connection = connect_postgres(url)
        book = LeaseBook(
            keeper_connection,
            self.gateway_id,
            lease_ttl=config.cluster.lease_ttl,
            shards=config.cluster.shards,
        )
        try:
            book.join()
            filled = fill_missing_shards(reader_connection, config.cluster.shards)
        except ShardCountMismatch as error:
            keeper_connection.close()
            reader_connection.close()
            raise ConfigError(str(error)) from None
        if filled:
            logger.info("cluster: %d stored unfinished tasks given their shard", filled)
        self.dispatcher = ShardDispatcher(
            config=config,
            publisher=self._publisher,
            topics=self.topics,
            presence=self.presence,
            status_topic=self.status_topic,
            fallback=self.fleet,
            writes=self.writes,
            connection=reader_connection,
            wall_clock=self.wall_clock,
        )
        self.keeper = LeaseKeeper(book, on_change=self.dispatcher.leases_changed)
        # Every message the gateway receives goes to the dispatcher (answers by shard), in
        # place of the engine's router (Engine.__init__), before the gateway hands any on.
        self.on_mqtt_message = self.dispatcher.on_mqtt_message
        self._nursery.start_soon(self._run_cluster, keeper_connection, reader_connection)
        return 0

    async def find(self, job_id: int) -> Job | None:
        """As :meth:`pm.engine.Engine.find` (every job is read from the store here); a paced
        job's ``rollout`` shows its job-wide pacing: the window and rate after the ramp steps
        its coordinator stored, and its tasks sent and not settled as committed."""
        job = await super().find(job_id)
        if job is not None and job.record.pacer is not None:
            job.record.pacer.in_flight = job.record.sent_count
        return job

    async def submit(self, request: JobRequest) -> Job:
        """Store a new job for the shards' owners to dispatch (see the module docstring).

        Returns once the job is committed. Error handling: as
        :meth:`pm.engine.Engine.submit` (:class:`~pm.store.StoreUnavailable` also when the
        commit fails), and :class:`~pm.job_limits.JobOptionRefused` for an option that would
        act per gateway.
        """
        for name in _PER_GATEWAY_OPTIONS:
            if getattr(request, name) is not None:
                raise JobOptionRefused(_refusal(name))
        if request.priority != "normal":
            raise JobOptionRefused(_refusal("priority"))
        job = await super().submit(request)
        # Answered once stored: only then can the other gateways find it, and a job posted
        # anywhere after this answer is found after this one (per-device FIFO across jobs).
        await self.store.sync()
        return job

    def _start(self, record: JobRecord, deadline: float) -> Job:
        # Stored by submit(), not run here: the job's parts run on their shards' owners.
        job = Job(
            record,
            self.fleet,
            self.store,
            watchers=self.config.watchers,
            feed_capacity=1,
            wall_clock=self.wall_clock,
        )
        job.feed.close()
        return job

    async def _ask(self, job_id: int, message: Callable[[Any], Any]) -> JobView | None:
        job = await self.find(job_id)
        if job is None:
            return None
        raise JobStateError(
            f"job {job_id}: pause, resume and cancel are not supported with cluster.enabled "
            "yet (its parts run on several gateways)"
        )

    async def delete(self, job_id: int, *, with_tasks: bool = False) -> JobView | None:
        job = await self.find(job_id)
        if job is not None and not job.final:
            raise JobStateError(
                f"job {job_id} is {job.record.status}: deleting a job before it ends is not "
                "supported with cluster.enabled yet (its parts run on several gateways)"
            )
        return await super().delete(job_id, with_tasks=with_tasks)

    # -- the cluster's actors ---------------------------------------------------------------

    async def _run_cluster(self, *connections: Connection) -> None:
        assert self.dispatcher is not None and self.keeper is not None, "set by recover()"
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.dispatcher.run)
                await nursery.start(self.keeper.run)
                logger.info(
                    "cluster: gateway %s joined (%d shards, lease_ttl %g s)",
                    self.gateway_id,
                    self.config.cluster.shards,
                    self.config.cluster.lease_ttl,
                    extra={"gateway_id": self.gateway_id},
                )
        finally:
            for connection in connections:
                connection.close()

    # -- MQTT hooks and shutdown -------------------------------------------------------------

    def on_mqtt_connect(self, generation: int) -> None:
        super().on_mqtt_connect(generation)
        if self.dispatcher is not None:
            self.dispatcher.on_mqtt_connect(generation)

    def stop_dispatching(self) -> None:
        super().stop_dispatching()
        if self.dispatcher is not None:
            self.dispatcher.stop_publishing()

    async def settle(self, grace: float) -> int:
        """As :meth:`pm.engine.Engine.settle` for every shard served; then the store
        commits what settled, while the leases are still held (the fence would refuse it
        once they are released, at the stop that follows)."""
        unanswered = await super().settle(grace)
        if self.dispatcher is not None:
            unanswered += await self.dispatcher.settle(grace)
        await self.store.sync_for_reading()
        return unanswered


def _refusal(field: str) -> str:
    return (
        f"`$.{field}` is not supported with cluster.enabled yet: it would act per gateway, "
        "not job-wide (docs/scale-out.md)"
    )
