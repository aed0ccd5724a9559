"""A paced job's coordinator rounds on the real PostgreSQL (pm/cluster/_grant_rows.py): grants
written per shard within the window, finals counted from the committed tasks, the ramp's
steps stored with the job, the rate's anchor kept, and nothing written without the lease."""

from __future__ import annotations

import msgspec
import pytest
import trio

from pm.cluster._grant_rows import coordinate, grants_of_parts, paced_jobs
from pm.cluster._leases import ShardLease
from pm.cluster._writes import ClusterWrites
from pm.job_options import JobOptions, RampOptions, RolloutOptions
from pm.rollout import RolloutState
from pm.store._postgres_connection import connect_postgres
from tests.stores import batch, make_job, read, running_store, write
from tests.test_cluster_writes import SHARDS, held_leases

GUARD = 30.0


async def test_a_coordinator_round_grants_within_the_window_and_only_under_its_lease(
    migrated_postgres_url: str,
) -> None:
    url = migrated_postgres_url
    options = RolloutOptions(
        max_in_flight=5, ramp=RampOptions(factor=2, after_succeeded=2, max_in_flight=10)
    )
    entries = batch(([f"dev-{n}" for n in range(30)], "/r"))
    with trio.fail_after(GUARD):
        async with running_store(url) as store:
            store.attach_cluster(ClusterWrites("a", SHARDS))
            job_id, first_task = await store.allocate_ids(1, 30)
            record = make_job(job_id, first_task, entries)
            record.options = JobOptions(rollout=options)
            store.job_created(record, entries)
            plain_id, plain_task = await store.allocate_ids(1, 30)
            store.job_created(make_job(plain_id, plain_task, entries), entries)
            await store.sync()
    lease = held_leases(url, "a")[job_id % SHARDS]
    connection = connect_postgres(url)
    try:
        assert paced_jobs(connection, [job_id, plain_id]) == {job_id: options}

        first = coordinate(connection, job_id, options, lease, 1000.0, 0.1)
        assert first is not None and (first.window, first.ramp_steps) == (5, 0)
        rows = read(url, "SELECT shard, granted, total FROM job_grants WHERE job_id = ?", (job_id,))
        by_shard = {shard: granted for shard, granted, _ in rows}
        assert sum(total for _, _, total in rows) == 30  # a row for every shard with tasks
        assert sum(by_shard.values()) == 5
        assert grants_of_parts(connection, [job_id], list(by_shard)) == {
            (job_id, shard): (granted, total) for shard, granted, total in rows
        }

        # Four of the granted shards' tasks resolve (committed, as the recount leaves them):
        # the ramp takes a step (every 2 resolved, up to a window of 10).
        granted_shards = [shard for shard, granted in by_shard.items() if granted]
        resolved = read(
            url,
            "SELECT id FROM tasks WHERE job_id = ? AND shard = ANY(CAST(? AS BIGINT[]))"
            " ORDER BY id LIMIT 4",
            (job_id, granted_shards),
        )
        for (task_id,) in resolved:
            write(url, "UPDATE tasks SET status = 'resolved' WHERE id = ?", (task_id,))
        write(url, "UPDATE jobs SET finish_count = 4 WHERE id = ?", (job_id,))
        second = coordinate(connection, job_id, options, lease, 1001.0, 0.1)
        assert second is not None and (second.window, second.ramp_steps) == (10, 1)
        rows = read(
            url,
            "SELECT g.granted, (SELECT count(*) FROM tasks WHERE job_id = g.job_id AND"
            " shard = g.shard AND status = 'resolved') FROM job_grants AS g WHERE job_id = ?",
            (job_id,),
        )
        assert sum(max(0, granted - final) for granted, final in rows) == 10
        (state,) = read(url, "SELECT rollout_state FROM jobs WHERE id = ?", (job_id,))[0]
        assert msgspec.json.decode(state, type=RolloutState).ramp_steps == 1

        # A round under a lease this gateway no longer holds (another epoch) writes nothing.
        before = read(url, "SELECT shard, granted FROM job_grants ORDER BY shard")
        stale = ShardLease(lease.shard, lease.epoch + 1, lease.expires_at, lease.owner)
        write(url, "UPDATE tasks SET status = 'resolved' WHERE job_id = ?", (job_id,))
        assert coordinate(connection, job_id, options, stale, 1002.0, 0.1) is None
        assert read(url, "SELECT shard, granted FROM job_grants ORDER BY shard") == before
    finally:
        connection.close()


async def test_the_rate_anchor_is_kept_across_rounds(migrated_postgres_url: str) -> None:
    url = migrated_postgres_url
    options = RolloutOptions(max_per_minute=60)
    entries = batch(([f"dev-{n}" for n in range(20)], "/r"))
    with trio.fail_after(GUARD):
        async with running_store(url) as store:
            store.attach_cluster(ClusterWrites("a", SHARDS))
            job_id, first_task = await store.allocate_ids(1, 20)
            record = make_job(job_id, first_task, entries)
            record.options = JobOptions(rollout=options)
            store.job_created(record, entries)
            await store.sync()
    lease = held_leases(url, "a")[job_id % SHARDS]
    connection = connect_postgres(url)
    try:
        granted = []
        for now in (1000.0, 1000.5, 1001.0, 1002.5, 1003.5):  # a send a second
            assert coordinate(connection, job_id, options, lease, now, 0.1) is not None
            granted += read(url, "SELECT sum(granted) FROM job_grants WHERE job_id = ?", (job_id,))
        assert [int(total) for (total,) in granted] == [1, 1, 2, 3, 4]
        # Moved by a second a grant; after the idle 1.5 s, from a second and a catch-up back.
        ((anchor,),) = read(url, "SELECT rate_anchor FROM job_pacing WHERE job_id = ?", (job_id,))
        assert anchor == pytest.approx(1003.4)
    finally:
        connection.close()


async def test_finished_tasks_a_single_gateway_stored_without_a_shard_are_left_out(
    migrated_postgres_url: str,
) -> None:
    """A database a single gateway used: its tasks have no shard, and a clustered gateway
    gives one only to the unfinished ones at start. The finished ones count in no shard."""
    url = migrated_postgres_url
    options = RolloutOptions(max_in_flight=3)
    entries = batch(([f"dev-{n}" for n in range(10)], "/r"))
    with trio.fail_after(GUARD):
        async with running_store(url) as store:
            store.attach_cluster(ClusterWrites("a", SHARDS))
            job_id, first_task = await store.allocate_ids(1, 10)
            record = make_job(job_id, first_task, entries)
            record.options = JobOptions(rollout=options)
            store.job_created(record, entries)
            await store.sync()
    write(
        url,
        "UPDATE tasks SET shard = NULL, status = 'resolved' WHERE job_id = ? AND id < ?",
        (job_id, first_task + 4),
    )
    lease = held_leases(url, "a")[job_id % SHARDS]
    connection = connect_postgres(url)
    try:
        decided = coordinate(connection, job_id, options, lease, 1000.0, 0.1)
    finally:
        connection.close()
    assert decided is not None
    rows = read(url, "SELECT shard, granted, total FROM job_grants WHERE job_id = ?", (job_id,))
    assert sum(total for _, _, total in rows) == 6
    assert sum(granted for _, granted, _ in rows) == 3
