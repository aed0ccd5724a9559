"""A clustered gateway's writes on the real PostgreSQL (pm/cluster/_writes.py, _backfill.py):
new tasks stored with their shard, stored ones given theirs, task updates fenced by the lease
they were made under, and job rows recounted from tasks by whichever gateway settles last."""

from __future__ import annotations

import threading

import msgspec
import psycopg
import trio

from pm.cluster import LeaseBook, ShardLease, shard_of
from pm.cluster._backfill import fill_missing_shards
from pm.cluster._writes import ClusterWindow, ClusterWrites
from pm.outcomes import OutcomeHistogram
from pm.store._postgres_connection import connect_postgres
from tests.stores import batch, create_job, read, running_store

SHARDS = 8
GUARD = 30.0


def settle(task, status: str = "resolved", code: int | None = 200) -> None:  # type: ignore[no-untyped-def]
    task.status = status
    task.waiting = None
    task.progress = 100
    task.result = {"ok": task.id}
    task.finish_at = 1_700_000_100.0 + task.id
    task.code = code


def held_leases(url: str, gateway: str, ttl: float = 30.0) -> dict[int, ShardLease]:
    connection = connect_postgres(url)
    try:
        book = LeaseBook(connection, gateway, lease_ttl=ttl, shards=SHARDS)
        book.join()
        return {lease.shard: lease for lease in book.round()}
    finally:
        connection.close()


async def test_a_clustered_store_inserts_each_task_with_its_shard(
    migrated_postgres_url: str,
) -> None:
    url = migrated_postgres_url
    devices = [f"dev-{n}" for n in range(40)]
    with trio.fail_after(GUARD):
        async with running_store(url) as store:
            store.attach_cluster(ClusterWrites("a", SHARDS))
            record = await create_job(store, batch((devices, "/r")))
            await store.sync()
    stored = dict(read(url, "SELECT device, shard FROM tasks WHERE job_id = ?", (record.id,)))
    assert stored == {device: shard_of(device, SHARDS) for device in devices}
    assert len(set(stored.values())) > 1


async def test_a_single_gateway_leaves_the_shard_null_and_a_cluster_fills_unfinished_ones(
    migrated_postgres_url: str,
) -> None:
    url = migrated_postgres_url
    devices = [f"dev-{n}" for n in range(2500)]
    with trio.fail_after(GUARD):
        async with running_store(url) as store:
            record = await create_job(store, batch((devices, "/r")))
            await store.sync()
            settle(record.tasks[0])
            store.task_changed(record.tasks[0])
            await store.sync()
    assert read(url, "SELECT count(*) FROM tasks WHERE shard IS NULL") == [(2500,)]

    connection = connect_postgres(url)
    try:
        assert fill_missing_shards(connection, SHARDS) == 2499  # in three batches
        assert fill_missing_shards(connection, SHARDS) == 0
    finally:
        connection.close()
    rows = read(url, "SELECT device, shard, status FROM tasks")
    assert all(
        shard == (None if status == "resolved" else shard_of(device, SHARDS))
        for device, shard, status in rows
    )


async def test_task_updates_are_fenced_by_their_lease_and_refusals_are_reported(
    migrated_postgres_url: str,
) -> None:
    url = migrated_postgres_url
    leases = held_leases(url, "a")
    assert len(leases) == SHARDS
    devices = [f"dev-{n}" for n in range(20)]
    writes = ClusterWrites("a", SHARDS)
    refused: list[set[int]] = []
    writes.on_refused = refused.append
    with trio.fail_after(GUARD):
        async with running_store(url) as store:
            store.attach_cluster(writes)
            record = await create_job(store, batch((devices, "/r")))
            waited = record.tasks[-1]
            waited.waiting = "device-offline"  # a whole row (rollout columns) at insert
            await store.sync()
            assert read(url, "SELECT waiting FROM tasks WHERE id = ?", (waited.id,)) == [
                ("device-offline",)
            ]
            lost = writes.shard_of(devices[0])
            stale = ShardLease(lost, leases[lost].epoch - 1, 0.0, "a")  # a former epoch
            for task in record.tasks:
                settle(task)
                shard = writes.shard_of(task.device)
                writes.task_changed(task, stale if shard == lost else leases[shard])
            writes.job_changed(record)
            await store.sync()

    statuses = dict(read(url, "SELECT device, status FROM tasks"))
    doomed = {device for device in devices if shard_of(device, SHARDS) == lost}
    assert {d for d, status in statuses.items() if status == "pending"} == doomed
    assert all(statuses[d] == "resolved" for d in devices if d not in doomed)
    # The whole row's update cleared its reason (unless the fence refused it).
    expected_waiting = "device-offline" if waited.device in doomed else None
    assert read(url, "SELECT waiting FROM tasks WHERE id = ?", (waited.id,)) == [
        (expected_waiting,)
    ]
    assert writes.refused_rows == len(doomed)
    assert refused == [{lost}]
    # The job is recounted from its tasks: the refused ones are still pending.
    assert read(url, "SELECT pending_count, finish_count, finish_at FROM jobs") == [
        (len(doomed), len(devices) - len(doomed), None)
    ]


async def test_jobs_are_recounted_from_tasks_and_end_once_with_their_outcomes(
    migrated_postgres_url: str,
) -> None:
    url = migrated_postgres_url
    leases = held_leases(url, "a")
    writes = ClusterWrites("a", SHARDS)
    devices = [f"dev-{n}" for n in range(10)]
    with trio.fail_after(GUARD):
        async with running_store(url) as store:
            store.attach_cluster(writes)
            record = await create_job(store, batch((devices, "/r")))
            await store.sync()
            first, rest = record.tasks[:4], record.tasks[4:]
            for task in first:
                settle(task, "error", 503) if task is first[0] else settle(task)
                writes.task_changed(task, leases[writes.shard_of(task.device)])
            first[1].attempts = 2  # sent twice: retried
            writes.job_changed(record)
            await store.sync()
            running = read(
                url,
                "SELECT status, pending_count, finish_count, error_count, retried_count FROM jobs",
            )
            for task in rest:
                settle(task, "timeout", None)
                writes.task_changed(task, leases[writes.shard_of(task.device)])
            record.finish("timeout", 1_700_000_999.0)  # what this part ended with
            writes.job_changed(record)
            await store.sync()
            ended = read(url, "SELECT status, finish_at, outcome, outcomes, progress FROM jobs")
            # Decided once: a later recount of the final job changes nothing.
            writes.job_changed(record)
            await store.sync()

    assert running == [("dispatching", 6, 3, 1, 1)]
    [(status, finish_at, outcome, outcomes, progress)] = ended
    assert (status, finish_at, outcome, progress) == (
        "timeout",
        1_700_000_100.0 + record.tasks[-1].id,
        "partial",
        100,
    )
    assert msgspec.json.decode(outcomes, type=OutcomeHistogram) == OutcomeHistogram(
        resolved={"200": 3}, error={"503": 1}, timeout=6
    )
    assert read(url, "SELECT status, finish_at, outcome FROM jobs") == [ended[0][:3]]


def test_two_gateways_settling_a_job_at_once_end_it(migrated_postgres_url: str) -> None:
    """Gateways a and b settle the job's last tasks in concurrent transactions: whichever
    locks the job second recounts after the first committed, so the job ends (without the
    lock, each would count the other's tasks as unsettled and the job would never end)."""
    url = migrated_postgres_url
    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute(
            "INSERT INTO shard_leases VALUES (0, 'a', 1, 1e12), (1, 'b', 1, 1e12);"
            "INSERT INTO jobs (id, created_at, status, total_count, finish_count, error_count,"
            " progress) VALUES (1, 0, 'dispatching', 2, 0, 0, 0);"
            "INSERT INTO tasks (id, job_id, entry, device, timeout, status, progress, shard)"
            " VALUES (1, 1, 0, 'x', 30, 'sent', 0, 0), (2, 1, 0, 'y', 30, 'sent', 0, 1)"
        )
    from pm.state import TaskRecord

    def window(task_id: int, device: str, gateway: str, shard: int) -> ClusterWindow:
        task = TaskRecord(
            task_id=task_id, job_id=1, entry=0, device=device, method="get", resource="/r",
            data=None, tunnel="", timeout=30, created_at=0,
        )  # fmt: skip
        settle(task)
        # Neither part knows it settles the job's last task.
        return ClusterWindow({task_id: (task, ShardLease(shard, 1, 1e12, gateway))}, {1: None})

    a, b = connect_postgres(url), connect_postgres(url)
    try:
        b_done = threading.Event()
        with a.transaction():
            ClusterWrites("a", 2).write(a, window(1, "x", "a", 0))

            def gateway_b() -> None:
                with b.transaction():
                    ClusterWrites("b", 2).write(b, window(2, "y", "b", 1))
                b_done.set()

            thread = threading.Thread(target=gateway_b)
            thread.start()
            # b waits for a's lock on the job row (a has not committed).
            assert not b_done.wait(0.5)
        thread.join(GUARD)
        assert b_done.is_set()
    finally:
        a.close()
        b.close()
    assert read(url, "SELECT status, finish_count, outcome FROM jobs") == [
        ("resolved", 2, "succeeded")
    ]
