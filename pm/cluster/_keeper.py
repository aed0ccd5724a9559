"""The actor that keeps one gateway's device-shard leases: a lease round every
``lease_ttl / 3`` seconds, and the gateway's own view of what it may dispatch for.

What the gateway holds (:attr:`LeaseKeeper.leases`) is what the last successful round
returned, until ``lease_ttl`` after that round *started* (a local deadline on trio's clock
that falls no later than the server's expiry, since the server read its clock after the
round started). A gateway that cannot renew in time, because the database is unreachable
or a round hangs, drops every lease at that deadline on its own: it stops dispatching
(fenced by itself) at about the moment the others may take its shards, and the database's
fence (:data:`pm.cluster.FENCE`) refuses whatever it still tries to write.

Restart and error policy: a round the database refuses (``Connection.is_storage_fault``: the
server gone, read-only, out of disk) is logged once per outage and retried at the next
tick; the leases lapse meanwhile as above, and the next successful round acquires shards
again at new epochs. Any other database error is a bug and ends the actor (and its nursery).
At start, :meth:`LeaseBook.join` runs first; its errors (the server unreachable,
:class:`~pm.cluster.ShardCountMismatch`) end the start. On a clean stop (cancellation) the
leases are released in a shielded step, so the others take the shards at their next round
rather than after ``lease_ttl``; a failure to release is logged and the leases then simply
expire. A round running in its worker thread when the stop comes is waited for (psycopg
cannot be interrupted from another thread; its connect timeout bounds it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from ._leases import LeaseBook, ShardLease

logger = logging.getLogger(__name__)

# Rounds per lease_ttl: a lease survives two failed rounds in a row.
ROUNDS_PER_TTL = 3


class LeaseKeeper:
    """Runs the lease rounds of ``book``.

    Args:
      on_change: called on the trio thread with the leases held whenever they change
        (shards gained or lost, or an epoch changed); the dispatch path starts and stops
        serving devices from it.
    """

    def __init__(
        self,
        book: LeaseBook,
        on_change: Callable[[Sequence[ShardLease]], object] = lambda leases: None,
    ) -> None:
        self._book = book
        self._connection = book.connection
        self._on_change = on_change
        self.leases: list[ShardLease] = []
        self._valid_until = -float("inf")
        self._renewed = trio.Event()
        self._outage: str | None = None
        # Rounds the database refused (tests, diagnostics).
        self.failed_rounds = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join, then keep the leases until cancelled (see the module's error policy)."""
        await trio.to_thread.run_sync(self._book.join)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drop_when_not_renewed)
                task_status.started()
                while True:
                    started = trio.current_time()
                    await self._round(started)
                    await trio.sleep_until(started + self._book.lease_ttl / ROUNDS_PER_TTL)
        finally:
            with trio.CancelScope(shield=True):
                self._hold([])
                await self._release()

    async def _round(self, started: float) -> None:
        try:
            leases = await trio.to_thread.run_sync(self._book.round)
        except self._connection.error_types as error:
            if not self._connection.is_storage_fault(error):
                raise
            self.failed_rounds += 1
            reason = self._connection.fault_reason(error)
            if self._outage is None:
                logger.error(
                    "cluster: cannot renew the shard leases: %s; they lapse %g s after the "
                    "last renewal, then this gateway holds none until the database is back",
                    reason,
                    self._book.lease_ttl,
                    extra={"fault": reason},
                )
            self._outage = reason
            return
        if self._outage is not None:
            logger.warning("cluster: shard leases renewed again after: %s", self._outage)
            self._outage = None
        self._valid_until = started + self._book.lease_ttl
        self._hold(leases)
        renewed, self._renewed = self._renewed, trio.Event()
        renewed.set()

    async def _drop_when_not_renewed(self) -> None:
        while True:
            if self.leases and trio.current_time() < self._valid_until:
                await trio.sleep_until(self._valid_until)
                continue
            if self.leases:
                logger.error(
                    "cluster: shard leases not renewed within %g s: this gateway stops "
                    "serving its %d shards",
                    self._book.lease_ttl,
                    len(self.leases),
                )
                self._hold([])
            await self._renewed.wait()

    def _hold(self, leases: list[ShardLease]) -> None:
        if leases != self.leases:
            self.leases = leases
            self._on_change(leases)

    async def _release(self) -> None:
        try:
            await trio.to_thread.run_sync(self._book.release_all)
        except self._connection.error_types as error:
            logger.warning(
                "cluster: could not release the shard leases at stop (%s): they expire "
                "after %g s instead",
                self._connection.fault_reason(error),
                self._book.lease_ttl,
            )
