"""The engine of a gateway with ``cluster.enabled``: jobs are stored here and dispatched by
the gateways holding their devices' shards (pm/shard_dispatch.py), this one included.

What differs from :class:`pm.engine.Engine` (one gateway, every job in memory):

- :meth:`ClusterEngine.submit` stores the job (its tasks with their shards) and starts no
  actor for it: every gateway, this one too, finds it in the database within a commit window
  and dispatches its part. The answer to ``POST /jobs`` is the job as created.
- Nothing is resumed at start: each gateway reads the unfinished tasks of each shard as it
  gains the shard's lease.
- Control from any gateway (pm/cluster/_control.py): :meth:`pause`, :meth:`resume` and
  :meth:`cancel` record the request in the job's row with a conditional write (two
  gateways racing: one wins, the other gets the single gateway's 409), and answer the job
  as stored after it; every gateway applies it to its parts of the job at its next poll
  (pm/shard_control.py). :meth:`delete` of a running job ends it ``cancelled`` and deletes
  it, as on one gateway; its parts elsewhere end at their next poll.
- Job options: ``abort`` criteria are evaluated on the job-wide counts and tripped once
  for the whole job (pm/shard_control.py); ``retry`` (per task), ``schedule`` (the same
  wall-clock rule on every gateway) and ``priority`` (per device, and a device is on one
  shard) act job-wide when each gateway applies them to its own parts.
- ``rollout`` (window, rate, ramp) holds job-wide: the gateway holding the lease of shard
  ``job_id % cluster.shards`` coordinates the job, granting each shard's part what it may
  send (pm/shard_pacing.py, pm/cluster/_grants.py), and a job's view shows its job-wide
  pacing from any gateway (:meth:`ClusterEngine.find`). ``tasks.max_in_flight`` is split
  between the gateways by the shards each serves (pm/shard_dispatch.py).

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

import trio

from .cluster import LeaseBook, LeaseKeeper, ShardCountMismatch, gateway_id_for
from .cluster._backfill import fill_missing_shards
from .cluster._control import ControlAction, ControlRequests
from .cluster._writes import ClusterWrites
from .config import Config, ConfigError
from .devices import Publisher
from .engine import Engine
from .jobs import Job
from .outcomes import SettleRate
from .schemas import JobRequest, JobView
from .shard_dispatch import ShardDispatcher
from .state import JobRecord
from .store import Store, StoreOpenError
from .store._connection import Connection
from .store._postgres_connection import connect_postgres, driver_errors

logger = logging.getLogger(__name__)


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
        # Control requests' writes (pm/cluster/_control.py), on a connection of their own.
        self._requests: ControlRequests | None = None

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
        control_connection = connect_postgres(url)
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
            control_connection.close()
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
        self._requests = ControlRequests(control_connection)
        self._nursery.start_soon(
            self._run_cluster, keeper_connection, reader_connection, control_connection
        )
        return 0

    async def find(self, job_id: int) -> Job | None:
        """As :meth:`pm.engine.Engine.find` (every job is read from the store here); a paced
        job's ``rollout`` shows its job-wide pacing: the window and rate after the ramp steps
        its coordinator stored, and its tasks sent and not settled as committed; its ``eta``
        is at the job-wide rate its tasks settled at (every gateway's), as the stored row's
        (pm/cluster/_writes.py)."""
        job = await super().find(job_id)
        if job is None:
            return None
        record = job.record
        if record.pacer is not None:
            record.pacer.in_flight = record.sent_count
        if not record.final:
            record.settle_rate = SettleRate.of_settle_times(
                task.finish_at for task in record.tasks if task.finish_at is not None
            )
        return job

    async def submit(self, request: JobRequest) -> Job:
        """Store a new job for the shards' owners to dispatch (see the module docstring).

        Returns once the job is committed. Error handling: as
        :meth:`pm.engine.Engine.submit` (:class:`~pm.store.StoreUnavailable` also when the
        commit fails).
        """
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

    # -- control from any gateway ----------------------------------------------------------

    async def pause(self, job_id: int) -> JobView | None:
        """Pause the job on every gateway (see the module docstring); as
        :meth:`pm.engine_control.JobControl.pause` otherwise."""
        return await self._control(job_id, "pause")

    async def resume(self, job_id: int) -> JobView | None:
        """Resume the job on every gateway; as :meth:`pm.engine_control.JobControl.resume`."""
        return await self._control(job_id, "resume")

    async def cancel(self, job_id: int) -> JobView | None:
        """Stop the job gracefully on every gateway: each ends its parts' unsent tasks
        ``cancelled`` at its next poll, and the job ends ``cancelled`` once the tasks in
        flight have settled; as :meth:`pm.engine_control.JobControl.cancel`."""
        return await self._control(job_id, "cancel")

    async def _control(self, job_id: int, action: ControlAction) -> JobView | None:
        """Record ``action`` in the job's row; answer the job as stored after it.

        Error handling: :class:`JobStateError` (409) when the job's state does not allow
        it, :class:`~pm.store.StoreUnavailable` (503) when the database cannot be reached.
        """
        if self._requests is None:
            raise AssertionError("control requests are opened by recover()")
        found = await self._requests.record(job_id, action, self.wall_clock())
        job = await self.find(job_id) if found else None
        return None if job is None else job.record.view()

    async def delete(self, job_id: int, *, with_tasks: bool = False) -> JobView | None:
        """As :meth:`pm.engine.Engine.delete`: a running job ends ``cancelled`` at once (its
        tasks not settled end so; answers still on their way are dropped) and is deleted;
        returns its final snapshot once the deletion is committed. Its parts on every
        gateway end at their next poll (their rows are gone)."""
        job = await self.find(job_id)
        if job is None or job.final:
            return await super().delete(job_id, with_tasks=with_tasks)
        job.record.finish("cancelled", self.wall_clock())
        view = job.record.view(collection="tasks" if with_tasks else "ids")
        self.store.job_deleted(job_id)
        await self.store.sync()
        return view

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
