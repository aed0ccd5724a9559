"""Several gateways on one database (issue 16): ids never handed out twice across stores, and
migrations that run once when gateways start together. Real SQLite file and real PostgreSQL
(the ``database`` fixture), real worker threads, so real time and a hang guard on each test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import trio

from pm.store import SCHEMA_VERSION, migrate
from pm.store._connection import Connection
from pm.store._ids import JOB_ID_BLOCK, TASK_ID_BLOCK, reserve
from pm.store._postgres_connection import connect_postgres
from pm.store._sqlite_connection import connect_sqlite
from tests.racing import race
from tests.stores import DatabaseUnderTest, running_store

GUARD = 30.0


def gateway_connection(database: DatabaseUnderTest) -> Connection:
    """A connection opened the way ``pm serve`` opens its store's (WAL on SQLite)."""
    if database.engine == "sqlite":
        return connect_sqlite(database.location)
    return connect_postgres(database.location)


def _overlaps(ranges: list[range]) -> list[tuple[range, range]]:
    ordered = sorted(ranges, key=lambda ids: ids.start)
    return [(a, b) for a, b in zip(ordered, ordered[1:], strict=False) if b.start < a.stop]


async def test_two_stores_on_one_database_never_hand_out_the_same_id(
    database: DatabaseUnderTest,
) -> None:
    job_ids: list[range] = []
    task_ids: list[range] = []
    with trio.fail_after(GUARD):
        async with (
            running_store(database.location) as first,
            running_store(database.location) as second,
        ):
            # Each allocation is larger than half a block, so every second one on a store
            # needs a new block, and the two stores' reservations interleave.
            for _ in range(4):
                for store in (first, second, second, first):
                    jobs, tasks = JOB_ID_BLOCK // 2 + 1, TASK_ID_BLOCK // 2 + 1
                    first_job, first_task = await store.allocate_ids(jobs, tasks)
                    job_ids.append(range(first_job, first_job + jobs))
                    task_ids.append(range(first_task, first_task + tasks))
            reservations = first.id_reservations + second.id_reservations
    assert reservations >= 16  # the blocks really were reserved in turns, not once up front
    assert _overlaps(job_ids) == [] and _overlaps(task_ids) == []
    (high_water,) = database.read("SELECT value FROM counters WHERE name = 'task'")[0]
    assert max(ids.stop - 1 for ids in task_ids) <= high_water


def test_concurrent_reservations_from_many_connections_get_disjoint_blocks(
    database: DatabaseUnderTest,
) -> None:
    """The reservation statement itself, raced from threads on their own connections, on a
    database where no id was reserved yet (the counter rows do not exist)."""
    setup = gateway_connection(database)
    migrate(setup)
    setup.close()
    # Few on SQLite: its writers queue on the file lock with sleeps of up to 100 ms each.
    threads, rounds, amount = (8 if database.engine == "postgresql" else 4), 10, 7
    blocks: list[range] = []
    lock = threading.Lock()

    def reserve_many(released: Callable[[], None]) -> None:
        connection = gateway_connection(database)
        try:
            if database.engine == "sqlite":
                # Writers queue on SQLite's file lock: wait for it rather than fail at once.
                connection.execute("PRAGMA busy_timeout = 20000")
            released()
            for _ in range(rounds):
                high_water = reserve(connection, "task", amount)
                with lock:
                    blocks.append(range(high_water - amount + 1, high_water + 1))
        finally:
            connection.close()

    race([reserve_many] * threads, GUARD)
    assert len(blocks) == threads * rounds
    assert _overlaps(blocks) == []
    # Nothing skipped either: the counter row moved by exactly what was reserved.
    assert database.read("SELECT value FROM counters WHERE name = 'task'") == [
        (threads * rounds * amount,)
    ]


async def test_one_store_alone_still_gets_consecutive_ids_across_blocks(
    database: DatabaseUnderTest,
) -> None:
    with trio.fail_after(GUARD):
        async with running_store(database.location) as store:
            assert await store.allocate_ids(1, TASK_ID_BLOCK) == (1, 1)
            # Past the block in hand: a new one, right after it, so no gap.
            assert await store.allocate_ids(1, 2 * TASK_ID_BLOCK) == (2, TASK_ID_BLOCK + 1)
            assert store.id_reservations == 3  # job block once, task blocks twice
    assert database.read("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


@pytest.mark.parametrize("found", [0, 1], ids=["empty", "old"])
def test_gateways_starting_together_migrate_the_database_once(
    database: DatabaseUnderTest, found: int
) -> None:
    """N connections run ``migrate`` at the same instant on an empty database, or one of the
    first release: one migrates, the others wait and find it done; none fails."""
    setup = gateway_connection(database)  # SQLite: the file exists before the threads open it
    migrate(setup, target=found)
    setup.close()
    gateways = 6
    started: list[int] = []
    lock = threading.Lock()

    def start_gateway(released: Callable[[], None]) -> None:
        connection = gateway_connection(database)
        try:
            released()
            from_version = migrate(connection)
            with lock:
                started.append(from_version)
        finally:
            connection.close()

    race([start_gateway] * gateways, GUARD)
    # Exactly one found the database as it was; the others found it already migrated.
    assert sorted(started) == [found] + [SCHEMA_VERSION] * (gateways - 1)
    assert database.read("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
