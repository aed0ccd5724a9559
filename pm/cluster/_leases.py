"""Gateway identity and device-shard leases with fencing epochs, in the shared PostgreSQL
database (tables ``gateways`` and ``shard_leases``, pm/store/_schema.py).

A gateway owns the devices of the shards it holds a lease on. Every lease has:

- an **owner** (a gateway id) or none (free);
- an **epoch**, raised by one at every acquisition, never otherwise;
- an **expiry**, ``expires_at``, in epoch seconds of the *database server's* clock (every
  gateway reads the same clock, so skew between gateways' machines does not matter; a
  gateway's own clock is never used).

One lease round (:meth:`LeaseBook.round`, every ``lease_ttl / 3`` seconds) is one
transaction: the gateway's heartbeat; release of what the previous round set aside; renewal
of its unexpired leases; setting aside what it holds above its fair share (``ceil(shards /
live gateways)``; a gateway is live while its heartbeat is younger than ``lease_ttl``): no
longer returned as held, so the gateway stops serving it, and released by the next round;
acquisition of free or expired shards up to its share. No gateway takes a shard another one
holds: a gateway that joins or rejoins gets shards only as the others release their excess
(a round after they stopped serving it) or let leases expire.

**Fencing.** A gateway that lost a lease (it paused past the ttl, its database connection
hung) may not know it yet. Every write it makes on behalf of a shard carries
:data:`FENCE` (``EXISTS (... shard = ? AND owner = ? AND epoch = ? AND expires_at > server
now FOR SHARE)``), so the database itself refuses the write once the lease expired or was
taken over (a new owner always has a new epoch). ``FOR SHARE`` makes the check and a
takeover conflict: a takeover waits for the fenced transaction to end, and a fenced write
that waited for a takeover re-reads the lease and finds the new epoch.

PostgreSQL only (a cluster needs one database server; ``FOR SHARE``, ``SKIP LOCKED`` and
``generate_series`` are PostgreSQL's). Each :class:`LeaseBook` method is synchronous, for a
worker thread, like the store's commits.

Error handling: database errors propagate (psycopg's); the caller decides. A gateway that
cannot complete a round cannot renew: its leases run out after ``lease_ttl`` and the others
take its shards, while the fence refuses its late writes. :class:`ShardCountMismatch` when
the cluster's database was set up with another ``cluster.shards``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgspec

from ..store._connection import Connection
from ._shards import fair_share

logger = logging.getLogger(__name__)

# Gateways silent for this many lease ttls are forgotten (a generated id is new at each start,
# so every crash leaves a row behind). One that was only paused is recorded again at its next
# round.
FORGET_AFTER_TTLS = 100

# The server's clock in epoch seconds, unless the caller passes its own "now" (tests).
_NOW = "coalesce(CAST(? AS DOUBLE PRECISION), extract(epoch FROM clock_timestamp()))"


def fence_on(shard: str, epoch: str) -> str:
    """:data:`FENCE` for a statement that takes the shard and the epoch from its own rows
    (SQL expressions, e.g. ``u.shard``); the owner stays a ``?`` parameter."""
    return (
        "EXISTS (SELECT 1 FROM shard_leases WHERE shard_leases.shard = "
        f"{shard} AND shard_leases.owner = ? AND shard_leases.epoch = {epoch}"
        " AND shard_leases.expires_at > extract(epoch FROM clock_timestamp()) FOR SHARE)"
    )


FENCE = fence_on("?", "?")
"""The condition that fences a write made on behalf of a shard: add it to the statement's
``WHERE`` with :meth:`ShardLease.fence` as its parameters. The write then changes nothing
unless the gateway still holds that lease, at that epoch, unexpired by the server's clock."""


class ShardCountMismatch(Exception):
    """The database's cluster has another number of shards than ``cluster.shards``."""


class ShardLease(msgspec.Struct, frozen=True):
    """A lease a gateway holds: the shard, the epoch it was acquired at, and until when
    (server clock, epoch seconds) it lasts unless renewed."""

    shard: int
    epoch: int
    expires_at: float
    owner: str

    def fence(self) -> tuple[int, str, int]:
        """The parameters of :data:`FENCE` for this lease."""
        return (self.shard, self.owner, self.epoch)


class LeaseBook:
    """One gateway's view of the cluster: its heartbeat, its leases and their rounds.

    Args:
      connection: a connection to the cluster's PostgreSQL database, migrated, used only
        by this book (from one thread at a time).
      gateway_id: this gateway's id (``cluster.gateway_id`` or a generated one).
      lease_ttl: seconds a lease lasts without renewal (``cluster.lease_ttl``).
      shards: the number of shards (``cluster.shards``).
    """

    def __init__(
        self, connection: Connection, gateway_id: str, *, lease_ttl: float, shards: int
    ) -> None:
        self.connection = connection
        self.gateway_id = gateway_id
        self.lease_ttl = lease_ttl
        self.shards = shards
        # Shards over the fair share, no longer returned as held by the last round and
        # released by the next (see round()).
        self._releasing: list[int] = []

    def _now(self, now: float | None) -> float:
        (server_now,) = self.connection.execute(f"SELECT {_NOW}", (now,)).fetchone()
        return float(server_now)

    def join(self, now: float | None = None) -> None:
        """Create the shard rows if this is the cluster's first gateway and record this one.

        Error handling: raises :class:`ShardCountMismatch` when the database's shards are
        not ``cluster.shards``.
        """
        with self.connection.transaction():
            now = self._now(now)
            # Gateways joining at once take turns here (self-conflicting; lease rounds and
            # fenced writes take weaker locks and go on), so the first one alone makes the
            # rows and every other compares its number with them.
            self.connection.execute("LOCK TABLE shard_leases IN SHARE ROW EXCLUSIVE MODE")
            (count,) = self.connection.execute("SELECT count(*) FROM shard_leases").fetchone()
            if count == 0:
                self.connection.execute(
                    "INSERT INTO shard_leases (shard, owner, epoch, expires_at)"
                    " SELECT shard, NULL, 0, 0 FROM generate_series(0, ? - 1) AS shard",
                    (self.shards,),
                )
                count = self.shards
            if count != self.shards:
                raise ShardCountMismatch(
                    f"cluster.shards is {self.shards} but the cluster in this database has "
                    f"{count} shards: every gateway of a cluster must use the same number"
                )
            self._heartbeat(now, started=True)

    def _heartbeat(self, now: float, *, started: bool = False) -> None:
        self.connection.execute(
            "INSERT INTO gateways (id, started_at, heartbeat_at) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
            + (", started_at = excluded.started_at" if started else ""),
            (self.gateway_id, now, now),
        )

    def round(self, now: float | None = None) -> list[ShardLease]:
        """One lease round (heartbeat, renew, release the excess, acquire up to the fair
        share), in one transaction; returns the leases held after it, by shard.

        ``now`` (epoch seconds) replaces the server's clock: tests pass it to step time.
        """
        releasing: list[int] = []
        with self.connection.transaction():
            now = self._now(now)
            self._heartbeat(now)
            self.connection.execute(
                "DELETE FROM gateways WHERE heartbeat_at < ?",
                (now - FORGET_AFTER_TTLS * self.lease_ttl,),
            )
            if self._releasing:
                self._release(self._releasing)
            expires_at = now + self.lease_ttl
            held = self._renew(now, expires_at)
            share = fair_share(self.shards, self._live_gateways(now))
            if len(held) > share:
                held, releasing = self._set_aside_excess(held, share)
            elif len(held) < share:
                held += self._acquire(now, expires_at, share - len(held))
        self._releasing = releasing
        return sorted(held, key=lambda lease: lease.shard)

    def _live_gateways(self, now: float) -> int:
        (live,) = self.connection.execute(
            "SELECT count(*) FROM gateways WHERE heartbeat_at > ?", (now - self.lease_ttl,)
        ).fetchone()
        return int(live)

    def _renew(self, now: float, expires_at: float) -> list[ShardLease]:
        # Only unexpired leases: one that ran out may already be another gateway's; if it
        # is still free this gateway acquires it again below, at a new epoch, so its writes
        # made under the old one stay fenced.
        rows = self.connection.execute(
            "UPDATE shard_leases SET expires_at = ? WHERE owner = ? AND expires_at > ?"
            " RETURNING shard, epoch, expires_at",
            (expires_at, self.gateway_id, now),
        ).fetchall()
        return self._leases(rows)

    def _set_aside_excess(
        self, held: list[ShardLease], share: int
    ) -> tuple[list[ShardLease], list[int]]:
        # The highest shards go: which ones does not matter, only that the choice is stable.
        # Not released in this round: the gateway stops serving them when this round's
        # leases reach it, and the next round releases them, so no other gateway can send
        # to their devices while this one still might (a handover, not an overlap).
        ordered = sorted(held, key=lambda lease: lease.shard)
        return ordered[:share], [lease.shard for lease in ordered[share:]]

    def _release(self, shards: Sequence[int]) -> None:
        # Free at once (expired now), epoch kept: the next owner raises it.
        self.connection.execute(
            "UPDATE shard_leases SET owner = NULL, expires_at = 0"
            " WHERE owner = ? AND shard = ANY(CAST(? AS BIGINT[]))",
            (self.gateway_id, list(shards)),
        )

    def _acquire(self, now: float, expires_at: float, wanted: int) -> list[ShardLease]:
        # SKIP LOCKED: gateways acquiring at once take different shards instead of queueing
        # on (or deadlocking over) the same rows; the lock re-checks the row's newest
        # version, so a shard another gateway took meanwhile is not taken again.
        rows = self.connection.execute(
            "UPDATE shard_leases SET owner = ?, epoch = epoch + 1, expires_at = ?"
            " WHERE shard IN (SELECT shard FROM shard_leases"
            "   WHERE owner IS NULL OR expires_at <= ?"
            "   ORDER BY shard LIMIT ? FOR UPDATE SKIP LOCKED)"
            " RETURNING shard, epoch, expires_at",
            (self.gateway_id, expires_at, now, wanted),
        ).fetchall()
        return self._leases(rows)

    def release_all(self) -> None:
        """A clean stop: free every lease this gateway holds and leave the live gateways
        (the others take the shards at their next round instead of after ``lease_ttl``)."""
        with self.connection.transaction():
            self.connection.execute(
                "UPDATE shard_leases SET owner = NULL, expires_at = 0 WHERE owner = ?",
                (self.gateway_id,),
            )
            self.connection.execute("DELETE FROM gateways WHERE id = ?", (self.gateway_id,))

    def _leases(self, rows: Sequence[Any]) -> list[ShardLease]:
        return [
            ShardLease(int(shard), int(epoch), float(expires_at), self.gateway_id)
            for shard, epoch, expires_at in rows
        ]
