"""The lease keeper actor (pm/cluster/_keeper.py) on the real PostgreSQL, in real time with
a short ``lease_ttl`` and a hang guard: shards split between two running gateways, handed
over at once on a clean stop, and dropped by a gateway that lost the database when its
leases lapse (it fences itself), then taken again at new epochs when the database is back.

Each test needs one or two lease ttls of real time (rounds every ttl / 3), about a second.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
import pytest
import trio

from pm.cluster import LeaseBook, LeaseKeeper, ShardLease
from pm.store._postgres_connection import connect_postgres
from tests.postgres_server import PostgresServer
from tests.waiting import poll_until

SHARDS = 16
TTL = 1.0
GUARD = 30.0


@pytest.fixture
def url(migrated_postgres_url: str) -> str:
    return migrated_postgres_url


class Recorded:
    """A keeper and every lease set it reported."""

    def __init__(self, url: str, gateway_id: str) -> None:
        self.connection = connect_postgres(url)
        self.changes: list[list[ShardLease]] = []
        book = LeaseBook(self.connection, gateway_id, lease_ttl=TTL, shards=SHARDS)
        self.keeper = LeaseKeeper(book, on_change=self._changed)

    def _changed(self, leases: Sequence[ShardLease]) -> None:
        self.changes.append(list(leases))

    def holds(self) -> int:
        return len(self.keeper.leases)


def owned_by(url: str, gateway_id: str) -> int:
    with psycopg.connect(url) as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM shard_leases WHERE owner = %s", (gateway_id,)
        ).fetchone()
    return int(count)


async def test_two_gateways_split_the_shards_and_a_clean_stop_hands_them_over_at_once(
    url: str,
) -> None:
    first, second = Recorded(url, "first"), Recorded(url, "second")
    try:
        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                first_scope = trio.CancelScope()

                async def run_first() -> None:
                    with first_scope:
                        await first.keeper.run()

                nursery.start_soon(run_first)
                await poll_until(lambda: first.holds() == SHARDS)  # alone: everything
                await nursery.start(second.keeper.run)
                await poll_until(lambda: first.holds() == second.holds() == SHARDS // 2)

                first_scope.cancel()
                await poll_until(lambda: first.changes[-1] == [])
                # Released at stop, not left to expire: free in the database already.
                await poll_until(lambda: owned_by(url, "first") == 0)
                await poll_until(lambda: second.holds() == SHARDS)
                nursery.cancel_scope.cancel()
        assert owned_by(url, "second") == 0  # its own clean stop released everything too
    finally:
        first.connection.close()
        second.connection.close()


async def test_a_gateway_that_loses_the_database_drops_its_shards_when_they_lapse(
    postgres_server: PostgresServer, url: str
) -> None:
    name = url.rpartition("/")[2]
    gateway = Recorded(url, "alone")
    try:
        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                await nursery.start(gateway.keeper.run)
                await poll_until(lambda: gateway.holds() == SHARDS)
                with postgres_server.admin() as admin:
                    admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
                    admin.execute(
                        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                        " WHERE datname = %s",
                        (name,),
                    )
                # Rounds fail; within the ttl of the last renewal the gateway holds nothing.
                await poll_until(lambda: gateway.holds() == 0)
                assert gateway.keeper.failed_rounds >= 1
                with postgres_server.admin() as admin:
                    admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
                await poll_until(lambda: gateway.holds() == SHARDS)
                # Taken again, each at a new epoch: writes fenced with the old ones stay refused.
                assert {lease.epoch for lease in gateway.keeper.leases} == {2}
                nursery.cancel_scope.cancel()
    finally:
        gateway.connection.close()
    assert [len(leases) for leases in gateway.changes] == [SHARDS, 0, SHARDS, 0]
