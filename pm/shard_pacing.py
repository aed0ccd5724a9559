"""Paced jobs on a clustered gateway: the coordinator rounds of the jobs whose coordinating
shard it holds, and the grants its shard parts send within (the scheme and its proof:
:mod:`pm.cluster._grants`; its rows: :mod:`pm.cluster._grant_rows`).

A job with ``rollout`` runs as one part per shard like any job (pm/shard_service.py), but
its part paces itself: a :class:`GrantPacer` in place of the job actor's
:class:`~pm.rollout.Pacer` lets it hand a task out only while the shard's grant allows, and
the part feeds its devices itself (as a single gateway's job does) instead of through the
shard's feeder, so a paced job waiting for grants holds up no other job on the shard.

:class:`ShardPacing` does its work at each turn of the dispatcher's loop (every
``store.commit_interval``), after the poll for new jobs: it learns which new jobs are paced
(one query, for new jobs only), runs one coordinator round per paced job whose coordinating
shard is served here, then reads the grants of the paced parts served here and hands them
to their pacers. So a grant is at most a turn late for its shard's part (plus the
coordinator's turn: two on different gateways), and a job without ``rollout`` costs nothing
here but the query that finds it is not paced.

Error policy: a database error propagates to the dispatcher, which logs a storage fault and
tries again at its next turn (grants stay as stored meanwhile: shards only run out of them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Set
from typing import Protocol

import trio

from .cluster import ShardLease
from .cluster._grant_rows import coordinate, grants_of_parts, paced_jobs
from .job_options import RolloutOptions, RolloutStatus
from .rollout import Pacer, RolloutState
from .schemas import WaitingReason
from .state import JobRecord
from .store._connection import Connection


class GrantPacer(Pacer):
    """The pacer of a job's part on one shard in a cluster: it hands a task out only while
    the part's tasks *used* (final since the job began, or handed out and not back) are
    fewer than the shard's grant (:mod:`pm.cluster._grants`). The rate and the ramp are the
    coordinator's: they come as grants.

    Args:
      options: the job's ``rollout``.
      state: the job's stored rollout state.
      record: the part (its tasks are those unfinished when the shard adopted it).
    """

    def __init__(self, options: RolloutOptions, state: RolloutState, record: JobRecord) -> None:
        super().__init__(options, state)
        self._record = record
        self._unfinished_at_adoption = len(record.tasks)
        self.granted: int | None = None  # none read yet: nothing may go
        self._final_before = 0
        self._reason: WaitingReason = (
            "rollout-window" if options.max_in_flight is not None else "rollout-rate"
        )
        # Set by the part: its feeder looks again.
        self.on_grant: Callable[[], None] = lambda: None

    def grant(self, granted: int, total: int) -> None:
        """The shard's grant as stored, and the job's tasks on the shard."""
        if granted == self.granted:
            return
        self.granted = granted
        # The shard's tasks final before the part was adopted (read with its tasks).
        self._final_before = total - self._unfinished_at_adoption
        self.on_grant()

    @property
    def used(self) -> int:
        return self._final_before + self._record.done_count + self.in_flight

    def blocked(self, now: float) -> WaitingReason | None:
        if self.granted is None or self.used >= self.granted:
            return self._reason
        return None

    @property
    def next_send_at(self) -> float:
        return math.inf  # a new grant wakes the feeder (on_grant)

    def on_handed_out(self, now: float) -> None:
        self.in_flight += 1

    def on_settled(self, resolved: bool) -> bool:
        self.in_flight -= 1
        return False  # the ramp is the coordinator's, from the job-wide count

    def status(self) -> RolloutStatus:
        return RolloutStatus(
            max_in_flight=self.window,
            max_per_minute=self.rate,
            ramp_steps=self._state.ramp_steps,
            in_flight=self.in_flight,
        )


class PacedPart(Protocol):
    """What :class:`ShardPacing` needs of a shard's paced job part (a ShardJob)."""

    @property
    def pacer(self) -> GrantPacer | None: ...


class ServedShard(Protocol):
    """What :class:`ShardPacing` needs of a shard served here (a ShardService)."""

    @property
    def lease(self) -> ShardLease: ...

    def paced_parts(self) -> Mapping[int, PacedPart]: ...


class ShardPacing:
    """The paced jobs of one clustered gateway (see the module docstring).

    Args:
      connection: the dispatcher's connection (used from its loop only).
      shards: ``cluster.shards`` (a job's coordinating shard is ``job_id % shards``).
      poll_interval: seconds between two turns (the dispatcher's).
      wall_clock: epoch seconds (the rate's anchor is stored in them).
    """

    def __init__(
        self,
        connection: Connection,
        shards: int,
        poll_interval: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._connection = connection
        self._shards = shards
        # A round late by up to a poll interval still grants what the rate allowed.
        self._catch_up = 2 * poll_interval
        self._wall_clock = wall_clock
        self.paced: dict[int, RolloutOptions] = {}
        self._looked_up: set[int] = set()
        # Coordinator rounds run here (tests, diagnostics).
        self.rounds = 0

    def coordinator_shard(self, job_id: int) -> int:
        return job_id % self._shards

    async def turn(self, unfinished: Set[int], services: Mapping[int, ServedShard]) -> None:
        """One turn: ``unfinished`` jobs as just polled, and the shards served, by shard."""
        new = sorted(unfinished - self._looked_up)
        if new:
            found = await trio.to_thread.run_sync(paced_jobs, self._connection, new)
            self.paced.update(found)
        self._looked_up = (self._looked_up | set(new)) & unfinished
        self.paced = {job: options for job, options in self.paced.items() if job in unfinished}
        if not self.paced:
            return
        for job_id, options in self.paced.items():
            service = services.get(self.coordinator_shard(job_id))
            if service is not None:
                await trio.to_thread.run_sync(
                    coordinate,
                    self._connection,
                    job_id,
                    options,
                    service.lease,
                    self._wall_clock(),
                    self._catch_up,
                )
                self.rounds += 1
        parts = {shard: service.paced_parts() for shard, service in services.items()}
        wanted = sorted({job for by_job in parts.values() for job in by_job})
        if not wanted:
            return
        grants = await trio.to_thread.run_sync(
            grants_of_parts, self._connection, wanted, sorted(parts)
        )
        for shard, by_job in parts.items():
            for job_id, part in by_job.items():
                grant = grants.get((job_id, shard))
                if grant is not None and part.pacer is not None:
                    part.pacer.grant(*grant)
