"""A clustered gateway's dispatch path: it serves exactly the device shards it holds leases
on, and finds the work of those shards in the shared database.

The :class:`ShardDispatcher` is one actor (its :meth:`~ShardDispatcher.run` loop) that alone
starts and stops :class:`~pm.shard_service.ShardService`\\ s. Each turn of its loop:

1. **Leases.** The lease keeper (:class:`pm.cluster.LeaseKeeper`) reports the leases held
   (:meth:`~ShardDispatcher.leases_changed`, on the trio thread). A shard no longer held,
   or held at another epoch, is stopped at once (its devices' actors and its job parts are
   cancelled; nothing is settled: :mod:`pm.shard_service`). A gained shard is started, then
   its unfinished tasks (pending and sent, of every job, oldest job first) are read and
   adopted: each job's part goes to the shard's feeder in that order, so each device gets
   its tasks in job order. ``sent`` ones are held as in flight and re-sent once with the same
   id at the first sign of their device (as ``recovery.resend_inflight`` after a restart:
   :mod:`pm.in_flight`); the previous owner was fenced, so what the database holds is the
   truth.
2. **Refusals.** A shard whose task writes the fence refused
   (:attr:`pm.cluster._writes.ClusterWrites.on_refused`) is stopped, as lost; it is started
   again only under a new lease (a new epoch).
3. **New jobs and job-wide control.** Jobs posted on any gateway (this one included: a
   clustered gateway never runs a job it was posted directly, it stores it) are found by
   polling the database every ``store.commit_interval``: the ids of the unfinished jobs,
   and for those not seen before, their unfinished tasks on the shards served here. The
   same read carries each job's job-wide control (pause, resume, stop, abort trips),
   which the parts here follow (:mod:`pm.shard_control`).
4. **Paced jobs.** After the poll, the paced jobs' coordinator rounds (for the jobs whose
   coordinating shard is served here) and their parts' grants (:mod:`pm.shard_pacing`).
   ``tasks.max_in_flight`` is shared by the shards served here, resized with them
   (:meth:`~ShardDispatcher._resize_budget`).

Why polling and not PostgreSQL's ``LISTEN/NOTIFY``: psycopg's notifications come through
its asyncio API or a blocking generator on a connection of their own, and neither fits a
trio loop without a thread parked on it; a notification also carries no order across
gateways, so the poll would still be needed after a reconnect. A poll every commit window
adds at most a window to a job's start on other gateways, and costs one indexed query
(``jobs_by_status``) per window per gateway. The poll reads job ids, not task ids above a
watermark: ids are reserved in blocks per gateway (pm/store/_ids.py), so a task id is not an
order in time across gateways and a watermark would skip the jobs of a gateway on a lower
block.

Answers: a clustered gateway hears only the answers on its own answer topic
(``topics.response`` with its ``{gateway}`` level), to the requests it sent. It hands each to
the fleet of the answering device's shard; one for a shard it no longer serves (a late
answer to a request it sent before the shard moved on: the new owner re-sent it, with its
own topic) is dropped, counted as ``shard_not_served`` in the gateway's ``droppedMessages``
(not malformed). Were the answer topic shared, every other gateway's answers would be
counted so.

Restart policy: a database error in a read is a fault like the store's
(``Connection.is_storage_fault``): logged, and the read is retried at the next turn; any
other error is a bug and ends the dispatcher (and the gateway). Losing the database also
stops the lease renewals, so the shards lapse and are stopped (1.).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio

from .cluster import ShardLease
from .cluster._writes import ClusterWrites
from .config import Config
from .device_turns import FleetBudget
from .devices import Fleet, Publisher
from .fleet_counters import RetiredFleets
from .presence import PresenceBook
from .protocol import TopicTemplates
from .shard_control import JobWideControl, read_unfinished
from .shard_pacing import ShardPacing
from .shard_service import ShardService, serve_shard
from .state import JobRecord
from .status_topic import DeviceMessages, StatusTopicSource
from .store._connection import Connection
from .store._shard_tasks import load_shard_parts

logger = logging.getLogger(__name__)

# The least seconds between two polls for new jobs (store.commit_interval may be 0).
MIN_POLL_INTERVAL = 0.01


class ShardDispatcher:
    """Serves the shards this gateway holds (see the module docstring).

    Args:
      config: the gateway's configuration.
      publisher: the MQTT client.
      topics: request and answer topics.
      presence: the gateway's presence book; the dispatcher becomes its listener and tells
        each online device's shard.
      status_topic: the engine's presence source (messages on status topics go there).
      fallback: the engine's own fleet, for messages on no device's answer topic (it counts
        them), and whose ``dropped`` counter takes ``shard_not_served``.
      writes: the cluster's writes (refusals come back from them).
      connection: a connection of the dispatcher's own, for its reads.
      wall_clock: epoch seconds.
    """

    def __init__(
        self,
        *,
        config: Config,
        publisher: Publisher,
        topics: TopicTemplates,
        presence: PresenceBook,
        status_topic: StatusTopicSource,
        fallback: Fleet,
        writes: ClusterWrites,
        connection: Connection,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._publisher = publisher
        self._topics = topics
        self._presence = presence
        self._status_topic = status_topic
        self._fallback = fallback
        self._dropped: Counter[str] = fallback.dropped
        self._writes = writes
        self._connection = connection
        self._wall_clock = wall_clock
        self._poll_interval = max(config.store.commit_interval, MIN_POLL_INTERVAL)
        self.services: dict[int, ShardService] = {}
        # The counters of the shard fleets no longer served (pm/fleet_counters.py).
        self.retired = RetiredFleets()
        self._leases: list[ShardLease] | None = None  # reported, not applied yet
        self._refused: set[int] = set()
        self._fenced: set[tuple[int, int]] = set()  # (shard, epoch) never served again
        self._known_jobs: set[int] = set()
        self.control = JobWideControl()
        self.pacing = ShardPacing(
            connection, config.cluster.shards, self._poll_interval, wall_clock
        )
        # tasks.max_in_flight: this gateway's share, for the shards it serves (resized with
        # them); shared by their fleets.
        self.budget = FleetBudget(0) if config.tasks.max_in_flight else None
        # Shards started whose unfinished tasks are not read yet (a read failed: retried).
        self._unloaded: set[int] = set()
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._outage: str | None = None
        self._stopping = False
        # Turns of the dispatcher's loop completed (tests, diagnostics).
        self.turns = 0
        presence.on_online = self._device_online
        writes.on_refused = self._writes_refused
        # Every message the gateway receives (pm.status_topic.DeviceMessages).
        self.on_mqtt_message = DeviceMessages(topics, status_topic, self).route

    @property
    def unfinished_jobs(self) -> int:
        """Jobs not final in the whole cluster, as of the last poll."""
        return len(self._known_jobs)

    # -- hooks (synchronous, on the trio thread) ---------------------------------------------

    def leases_changed(self, leases: Sequence[ShardLease]) -> None:
        """The lease keeper's ``on_change``: applied at the dispatcher's next turn, at once."""
        self._leases = list(leases)
        self._wake.set()

    def _writes_refused(self, shards: set[int]) -> None:
        self._refused |= shards
        self._wake.set()

    def _device_online(self, device: str, came_back: bool) -> None:
        service = self.services.get(self._writes.shard_of(device))
        if service is not None:
            service.device_online(device, came_back)

    # The answer router of this gateway's DeviceMessages (on_mqtt_message): the same routing
    # as a single gateway's, except that an answer goes to the fleet of its device's shard.
    def on_answer(self, topic: str, payload: bytes) -> None:
        device = self._topics.device_of_response(topic)
        if device is None:
            self._fallback.on_answer(topic, payload)  # counted there as a foreign topic
        else:
            self.on_device_answer(device, payload)

    def fleet_serving(self, device: str) -> Fleet | None:
        """The fleet of ``device``'s shard, ``None`` if this gateway does not serve it."""
        service = self.services.get(self._writes.shard_of(device))
        return None if service is None else service.fleet

    def on_device_answer(self, device: str, payload: bytes) -> None:
        service = self.services.get(self._writes.shard_of(device))
        if service is None:
            self._dropped["shard_not_served"] += 1
        else:
            service.fleet.on_device_answer(device, payload)

    def on_mqtt_connect(self, generation: int) -> None:
        """The broker connection is back: each shard's requests in flight go out again."""
        if generation > 1 and not self._stopping:
            for service in self.services.values():
                service.fleet.resend_after_reconnect()

    # -- shutdown ----------------------------------------------------------------------------

    def stop_publishing(self) -> None:
        """A graceful stop begins: no request leaves any shard's fleet from now on."""
        self._stopping = True
        for service in self.services.values():
            service.fleet.stop_publishing()

    async def settle(self, grace: float) -> int:
        """After :meth:`stop_publishing`: wait up to ``grace`` seconds for the requests in
        flight, then until every job part applied its reports. Returns how many requests
        were left unanswered."""
        services = list(self.services.values())
        with trio.move_on_after(grace):
            for service in services:
                await service.fleet.wait_nothing_in_flight()
        for service in services:
            for job in list(service.jobs.values()):
                await job.apply_reports(timeout=max(grace, 1.0))
        return sum(service.fleet.in_flight for service in services)

    # -- the actor ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply lease changes and poll for new jobs until cancelled (the shards it served
        stop with it)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                self._wake = trio.Event()
                await self._apply_changes()
                if self._unloaded:
                    await self._read(self._load_gained)
                await self._read(self._poll)
                await self._read(self._pace)
                self.turns += 1
                with trio.move_on_after(self._poll_interval):
                    await self._wake.wait()

    async def _apply_changes(self) -> None:
        try:
            await self._apply_lease_changes()
        finally:
            self._resize_budget()

    def _resize_budget(self) -> None:
        """This gateway's share of ``tasks.max_in_flight``: the budget times the shards it
        serves over all the shards, rounded down, so the gateways' shares never add up to
        more than the budget (a shard is served by one gateway at a time)."""
        if self.budget is not None:
            shares = self._config.tasks.max_in_flight * len(self.services)
            self.budget.resize(shares // self._config.cluster.shards)

    async def _apply_lease_changes(self) -> None:
        refused, self._refused = self._refused, set()
        fenced = [shard for shard in sorted(refused) if shard in self.services]
        for shard in fenced:
            self._fenced.add((shard, self.services[shard].lease.epoch))
        self._stop(fenced, "the database refused their writes (fenced)", logging.WARNING)
        leases, self._leases = self._leases, None
        if leases is None:
            return
        held = {lease.shard: lease for lease in leases}
        # A renewal only moves expires_at: the lease is the same while its epoch is.
        lost = [
            shard
            for shard, service in sorted(self.services.items())
            if shard not in held or held[shard].epoch != service.lease.epoch
        ]
        self._stop(lost, "their leases are no longer held at those epochs", logging.INFO)
        gained = [
            lease
            for shard, lease in held.items()
            if shard not in self.services and (shard, lease.epoch) not in self._fenced
        ]
        if not gained:
            return
        for lease in gained:
            await self._start(lease)
        logger.info(
            "cluster: serving %d shards (%d gained)",
            len(self.services),
            len(gained),
            extra={"shards": len(self.services), "gained": len(gained)},
        )
        self._unloaded |= {lease.shard for lease in gained}

    async def _load_gained(self) -> None:
        """Adopt the unfinished tasks of the shards started and not read yet (all jobs)."""
        shards = sorted(shard for shard in self._unloaded if shard in self.services)
        if shards:
            await self._adopt_parts(shards, None)
        self._unloaded.clear()

    async def _start(self, lease: ShardLease) -> None:
        assert self._nursery is not None, "started by run()"
        service = await self._nursery.start(
            serve_shard,
            partial(
                ShardService,
                lease,
                self._config,
                publisher=self._publisher,
                topics=self._topics,
                presence=self._presence,
                writes=self._writes,
                wall_clock=self._wall_clock,
                budget=self.budget,
            ),
        )
        if self._stopping:
            service.fleet.stop_publishing()
        self.services[lease.shard] = service

    def _stop(self, shards: list[int], why: str, level: int) -> None:
        if not shards:
            return
        stopped = [self.services.pop(shard) for shard in shards]
        for service in stopped:
            service.stop()
            self.retired.retire(service.fleet)
        logger.log(
            level,
            "cluster: stopped serving %d shards (%s): %s; %d job parts and %d requests in "
            "flight left to their next owners",
            len(shards),
            ", ".join(map(str, shards)),
            why,
            sum(len(service.jobs) for service in stopped),
            sum(service.fleet.in_flight for service in stopped),
            extra={"shards": shards},
        )

    async def _poll(self) -> None:
        polled = await trio.to_thread.run_sync(read_unfinished, self._connection)
        unfinished = polled.ids
        new = unfinished - self._known_jobs
        for service in self.services.values():
            service.adopted &= unfinished  # a finished job is never adopted again
        # Not on a shard whose tasks are not read yet: that read takes every job, in order.
        loaded = [shard for shard in self.services if shard not in self._unloaded]
        if new and loaded:
            await self._adopt_parts(loaded, sorted(new))
        # Only once their parts are adopted: a failed read finds the same jobs new again.
        self._known_jobs = unfinished
        # Job-wide control: pauses, resumes, stops and abort trips (pm/shard_control.py).
        await self.control.follow(polled, self.services.values())
        await trio.to_thread.run_sync(
            self.control.check, self._connection, polled, self._wall_clock()
        )

    async def _pace(self) -> None:
        await self.pacing.turn(self._known_jobs, self.services)

    async def _adopt_parts(self, shards: list[int], job_ids: list[int] | None) -> None:
        parts: list[tuple[int, JobRecord]] = await trio.to_thread.run_sync(
            load_shard_parts, self._connection, shards, self._topics.response_topic, job_ids
        )
        for shard, record in parts:
            service = self.services.get(shard)
            # Gone meanwhile (stopped: its next owner reads it), or adopted already (a
            # job found by the poll and by a gain in the same turn).
            if service is not None and record.id not in service.adopted:
                service.adopt(record)

    async def _read(self, read: Callable[[], Awaitable[None]]) -> None:
        """Run one database read of the loop; a storage fault is logged once per outage and
        the read is tried again at the next turn."""
        try:
            await read()
        except self._connection.error_types as error:
            if not self._connection.is_storage_fault(error):
                raise
            reason = self._connection.fault_reason(error)
            if self._outage is None:
                logger.error(
                    "cluster: cannot read the shards' tasks: %s; retried every %g s",
                    reason,
                    self._poll_interval,
                )
            self._outage = reason
            return
        if self._outage is not None:
            logger.warning("cluster: reading the shards' tasks works again")
            self._outage = None
