"""One device shard served by a clustered gateway: its own fleet of device actors, the parts
of jobs that have tasks on it, and the feeder that hands those tasks to the devices in order.

A gateway serves a shard while it holds the shard's lease (pm/shard_dispatch.py starts and
stops a :class:`ShardService` as the lease keeper reports gains and losses). Everything the
shard runs lives in the service's own nursery, so losing the shard is one cancellation: its
device actors stop, requests in flight are dropped, job parts stop where they are, and
*nothing is settled or written* (the next owner reads the tasks' stored state and goes on;
whatever this gateway still had to write for the shard is refused by the fence).

A job's *part* here is a :class:`ShardJob`: the ordinary job actor (pm/jobs.py) over the
part's tasks, recording through a :class:`~pm.cluster._writes.ShardRecorder` with the lease
it was taken under, except that it does not feed devices itself: the service's one feeder
does, part after part in the order they were adopted (jobs oldest first), so a device's tasks
reach its actor in job order across jobs (per-device FIFO), whatever the scheduler does.

Restart policy: a job part whose actor raises ends ``cancelled`` like any job actor (its
supervisor logs it); device actors follow :class:`~pm.devices.Fleet`'s policy. A feeder that
raises is a bug: it ends the service's nursery and with it the gateway's dispatch path.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import trio

from actors import Directive, Failure, Supervisor

from .cluster import ShardLease
from .cluster._writes import ClusterWrites, ShardRecorder
from .config import Config
from .device_turns import FleetBudget
from .devices import Fleet, Publisher
from .jobs import Job
from .presence import Presence, PresenceBook
from .protocol import TopicTemplates
from .shard_control import FollowJobWide, JobWideFollower
from .shard_pacing import GrantPacer
from .state import JobRecord

logger = logging.getLogger(__name__)

OFFLINE = Presence.OFFLINE

# Reports a job part buffers from its devices before they wait for it (as pm.engine's jobs).
JOB_MAILBOX = 4096


class ShardJob(JobWideFollower, Job):
    """A job's part on one shard: the job actor, whose tasks the shard's feeder hands to the
    devices (see the module docstring), following the job's job-wide control (pause,
    resume, stop, abort trips: pm/shard_control.py). A paced job's part (``rollout``) is fed
    by its own feeder instead, paced by a :class:`~pm.shard_pacing.GrantPacer` within the
    shard's grant (as a single gateway's job), holding up no other job of the shard."""

    def __init__(self, record: JobRecord, *args: Any, **kwargs: Any) -> None:
        super().__init__(record, *args, **kwargs)
        rollout = record.options.rollout
        self.pacer: GrantPacer | None = None
        if rollout is not None:
            self.pacer = GrantPacer(rollout, record.rollout_state, record)
            self.pacer.on_grant = self._queue.poke
            self._queue.pacer = record.pacer = self.pacer
            return
        # The shard's feeder hands out the part's tasks, in adoption order (the ones in
        # flight under a former owner included); the part's own feeder only what comes back
        # to its queue: tasks held back by a pause or a schedule, and retries after their
        # backoff.
        self._queue.hand_fresh_elsewhere()
        self._resumed_in_flight = []

    def _handle(self, message: Any) -> None:
        if isinstance(message, FollowJobWide):
            self._follow(message)
        else:
            super()._handle(message)

    def _log_finished(self) -> None:
        # One line per job and shard would be hundreds per job: DEBUG only (the job ends
        # in the database, where the last part's commit recounts it).
        if logger.isEnabledFor(logging.DEBUG):
            record = self.record
            logger.debug(
                "job %d: its part of %d tasks here ended %s",
                record.id,
                len(record.tasks),
                record.status,
                extra={"job_id": record.id, "status": record.status},
            )


async def serve_shard(
    make: Callable[[trio.Nursery], ShardService],
    *,
    task_status: trio.TaskStatus[ShardService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service ``make`` builds in a nursery of its own until it is stopped
    (:meth:`ShardService.stop`) or cancelled; ``task_status.started`` hands it out."""
    async with trio.open_nursery() as nursery:
        task_status.started(make(nursery))
        await trio.sleep_forever()


class ShardService:
    """Serve ``lease``'s shard in ``nursery`` (see :func:`serve_shard`).

    Args:
      lease: the lease the shard is held under (every write of its tasks carries it).
      config: the gateway's configuration (fleet settings, watchers).
      publisher: the MQTT client.
      topics: request and answer topics.
      presence: the gateway's presence book (shared by every shard's fleet).
      writes: where the job parts record their changes.
      wall_clock: epoch seconds.
      budget: the gateway's share of ``tasks.max_in_flight``, shared by every shard it
        serves (``None``: no budget).
    """

    def __init__(
        self,
        lease: ShardLease,
        config: Config,
        nursery: trio.Nursery,
        publisher: Publisher,
        topics: TopicTemplates,
        presence: PresenceBook,
        writes: ClusterWrites,
        wall_clock: Callable[[], float] = time.time,
        budget: FleetBudget | None = None,
    ) -> None:
        self.lease = lease
        self._config = config
        self._nursery = nursery
        self._writes = writes
        self._wall_clock = wall_clock
        self._recorder = ShardRecorder(writes, lease)
        before = presence.on_online
        self.fleet = Fleet(
            nursery,
            publisher,
            topics,
            mailbox_size=config.tasks.device_mailbox,
            idle_timeout=config.tasks.device_idle_retire,
            max_answer_bytes=config.limits.max_answer_bytes,
            max_answer_depth=config.limits.max_json_depth,
            resend_on_reconnect=config.tasks.resend_on_reconnect,
            presence=presence,
            wall_clock=wall_clock,
        )
        if budget is not None:
            # One budget for all the shards this gateway serves (pm/shard_dispatch.py).
            self.fleet.budget = budget
        # The fleet made itself the presence book's listener: it is told through the
        # dispatcher (by shard) instead, which stays the book's one listener.
        online = presence.on_online
        if online is None:
            raise AssertionError("a fleet listens to its presence book")
        self.device_online: Callable[[str, bool], None] = online
        presence.on_online = before
        self._presence = presence
        self._supervisor = Supervisor(nursery, self._on_job_failure)
        # Job parts running here, by job id; and every job ever adopted here (a job is
        # adopted once per shard: the poll for new jobs skips those).
        self.jobs: dict[int, ShardJob] = {}
        self.adopted: set[int] = set()
        self._to_feed, self._feed = trio.open_memory_channel[ShardJob](math.inf)
        nursery.start_soon(self._feed_devices, name=f"shard:{lease.shard}:feeder")

    def stop(self) -> None:
        """Stop serving the shard: everything it runs is cancelled, nothing is settled."""
        self._nursery.cancel_scope.cancel()

    def adopt(self, record: JobRecord) -> None:
        """Run ``record`` (a job's unfinished tasks on this shard) as a job part: its actor
        starts now, paused or stopping if its job is so job-wide (as ``record`` was read),
        and its tasks go to their devices after those of the parts adopted before."""
        self.adopted.add(record.id)
        if record.id in self.jobs:
            raise AssertionError(f"job {record.id} adopted twice on shard {self.lease.shard}")
        job = ShardJob(
            record,
            self.fleet,
            self._recorder,
            watchers=self._config.watchers,
            feed_capacity=1,
            wall_clock=self._wall_clock,
        )
        job.start_following()
        now = self._wall_clock()
        remaining = math.inf if record.timeout is None else record.created_at + record.timeout - now

        async def run(inbox: trio.MemoryReceiveChannel[Any]) -> None:
            await job.run(inbox, trio.current_time() + remaining)

        job.ref = self._supervisor.spawn(
            f"job:{record.id}:shard:{self.lease.shard}",
            run,
            capacity=JOB_MAILBOX,
            key=record.id,
            on_exit=lambda: self._part_ended(job),
        )
        self.jobs[record.id] = job
        for task in record.tasks:
            # In flight under the previous owner (dead or fenced): one more copy goes out
            # when its turn comes, unless the device is known offline (then when it is
            # back), rather than at the device's next announcement as after a restart: it
            # may have announced itself long ago, to this gateway too.
            if task.status == "sent" and self._presence.presence(task.device) != OFFLINE:
                self.device_online(task.device, False)
        if job.pacer is None:  # a paced part feeds its devices itself
            self._to_feed.send_nowait(job)

    def paced_parts(self) -> dict[int, ShardJob]:
        """The parts running here of jobs with ``rollout``, by job id."""
        return {job_id: job for job_id, job in self.jobs.items() if job.pacer is not None}

    def _part_ended(self, job: ShardJob) -> None:
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]

    async def _feed_devices(self) -> None:
        handed_out = 0
        async for job in self._feed:
            reports, gate = job.ref, job.gate
            if reports is None:
                raise AssertionError(f"job {job.id} part runs without a mailbox reference")
            high = job.record.options.priority == "high"
            for task in job.record.tasks:
                # Ended meanwhile (the part timed out, was stopped, or expired it), or a
                # retry waiting for its backoff (its part's own feeder sends it then).
                if task.final or task.next_attempt_at is not None:
                    continue
                await self.fleet.dispatch(task, reports, gate, high_priority=high)
                handed_out += 1
                # As a job's feeder: let the devices run every so often.
                if handed_out % 64 == 0:
                    await trio.lowlevel.checkpoint()

    def _on_job_failure(self, failure: Failure[Any]) -> Directive:
        logger.error(
            "job %s on shard %d: its actor failed (%r); this part ends cancelled",
            failure.key,
            self.lease.shard,
            failure.error,
        )
        return Directive.STOP
