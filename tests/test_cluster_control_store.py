"""Job-wide control recorded in the job row on the real PostgreSQL (pm/cluster/_control.py,
pm/cluster/_writes.py): gateways racing one request get one winner, the recount of each
commit keeps a job paused job-wide and ends a job stopped job-wide with that status whatever
its last part ended with, and a trip is written once."""

from __future__ import annotations

import threading

import msgspec
import pytest
import trio

from pm.cluster._control import ControlRequests, read_control_row, request_control, trip_abort
from pm.cluster._grant_rows import _SAVE_RAMP_STEPS
from pm.cluster._writes import ClusterWrites
from pm.job_contract import JobStateError
from pm.shard_control import JobWideControl, read_unfinished
from pm.store import StoreUnavailable
from pm.store._postgres_connection import connect_postgres
from tests.stores import batch, create_job, read, running_store
from tests.test_cluster_writes import SHARDS, held_leases, settle
from tests.test_shard_dispatch import FlakyConnection

GUARD = 30.0
NOW = 1_700_000_500.0


async def stored_job(url: str, devices: int = 4) -> int:
    async with running_store(url) as store:
        store.attach_cluster(ClusterWrites("a", SHARDS))
        record = await create_job(store, batch(([f"dev-{n}" for n in range(devices)], "/r")))
        await store.sync()
    return record.id


async def test_gateways_racing_one_pause_get_one_winner_and_a_clear_refusal(
    migrated_postgres_url: str,
) -> None:
    url = migrated_postgres_url
    with trio.fail_after(GUARD):
        job_id = await stored_job(url)
    racers = 6
    ready = threading.Barrier(racers)
    outcomes: list[str] = []

    def pause() -> None:
        connection = connect_postgres(url)
        try:
            ready.wait()
            request_control(connection, job_id, "pause", NOW)
            outcomes.append("paused")
        except JobStateError as error:
            outcomes.append(str(error))
        finally:
            connection.close()

    threads = [threading.Thread(target=pause) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
    assert sorted(outcomes) == [f"job {job_id} is already held (paused)"] * 5 + ["paused"]
    assert read(url, "SELECT status, holds FROM jobs") == [("paused", '["paused"]')]


async def test_control_of_a_job_that_is_not_there_or_has_finished(
    migrated_postgres_url: str,
) -> None:
    url = migrated_postgres_url
    with trio.fail_after(GUARD):
        job_id = await stored_job(url)
    connection = connect_postgres(url)
    try:
        assert request_control(connection, job_id + 1, "cancel", NOW) is False
        connection.execute(
            "UPDATE jobs SET status = 'resolved', finish_at = 1 WHERE id = ?", (job_id,)
        )
        with pytest.raises(JobStateError, match=f"^job {job_id} is resolved: it has finished$"):
            request_control(connection, job_id, "cancel", NOW)
    finally:
        connection.close()


async def test_the_recount_keeps_a_job_paused_and_ends_a_stopped_one_with_its_ending(
    migrated_postgres_url: str,
) -> None:
    url = migrated_postgres_url
    leases = held_leases(url, "a")
    writes = ClusterWrites("a", SHARDS)
    connection = connect_postgres(url)
    try:
        with trio.fail_after(GUARD):
            async with running_store(url) as store:
                store.attach_cluster(writes)
                record = await create_job(store, batch(([f"dev-{n}" for n in range(4)], "/r")))
                await store.sync()
                request_control(connection, record.id, "pause", NOW)
                first, *rest = record.tasks
                settle(first)
                writes.task_changed(first, leases[writes.shard_of(first.device)])
                writes.job_changed(record)
                await store.sync()
                paused = read(url, "SELECT status, finish_count FROM jobs")
                request_control(connection, record.id, "cancel", NOW)
                # This part never saw the cancel: its tasks resolve, it ends "resolved".
                for task in rest:
                    settle(task)
                    writes.task_changed(task, leases[writes.shard_of(task.device)])
                record.status, record.finish_at = "resolved", 1_700_000_999.0
                writes.job_changed(record)
                await store.sync()
    finally:
        connection.close()
    assert paused == [("paused", 1)]
    assert read(url, "SELECT status, outcome, ending FROM jobs") == [
        ("cancelled", "succeeded", "cancelled")
    ]


async def test_an_abort_trip_is_written_once(migrated_postgres_url: str) -> None:
    url = migrated_postgres_url
    with trio.fail_after(GUARD):
        job_id = await stored_job(url, devices=1)
    first, second = connect_postgres(url), connect_postgres(url)
    first.execute(
        "UPDATE jobs SET options = ?", ('{"abort":[{"on":"error","thresholdPercent":10}]}',)
    )
    try:
        seen_by_first = read_control_row(first, job_id)
        seen_by_second = read_control_row(second, job_id)
        assert seen_by_first is not None and seen_by_second is not None
        assert trip_abort(first, seen_by_first, 0) is True
        assert trip_abort(second, seen_by_second, 0) is False  # the row moved on
    finally:
        first.close()
        second.close()
    assert read(url, "SELECT ending, rollout_state FROM jobs") == [
        ("aborted", '{"tripped":[0],"stopped_by":0}')
    ]


async def test_a_job_stopped_job_wide_whose_last_part_timed_out_ends_timeout(
    migrated_postgres_url: str,
) -> None:
    """As on one gateway: a job timeout ends the job ``timeout`` even while it stops."""
    url = migrated_postgres_url
    leases = held_leases(url, "a")
    writes = ClusterWrites("a", SHARDS)
    connection = connect_postgres(url)
    try:
        with trio.fail_after(GUARD):
            async with running_store(url) as store:
                store.attach_cluster(writes)
                record = await create_job(store, batch((["dev-0", "dev-1"], "/r")))
                await store.sync()
                request_control(connection, record.id, "cancel", NOW)
                for task in record.tasks:
                    settle(task, "timeout", None)
                    writes.task_changed(task, leases[writes.shard_of(task.device)])
                record.status, record.finish_at = "timeout", 1_700_000_999.0
                writes.job_changed(record)
                await store.sync()
    finally:
        connection.close()
    assert read(url, "SELECT status, ending FROM jobs") == [("timeout", "cancelled")]


async def test_a_request_the_database_cannot_take_is_refused_503_and_recorded_on_retry(
    migrated_postgres_url: str,
) -> None:
    url = migrated_postgres_url
    with trio.fail_after(GUARD):
        job_id = await stored_job(url)
        connection = FlakyConnection(url)
        requests = ControlRequests(connection)
        try:
            connection.fail_on, connection.failures = "UPDATE jobs", 1
            with pytest.raises(StoreUnavailable, match=f"^job {job_id}: the pause could not be"):
                await requests.record(job_id, "pause", NOW)
            assert read(url, "SELECT status FROM jobs") == [("pending",)]  # nothing recorded
            assert await requests.record(job_id, "pause", NOW) is True
        finally:
            connection.close()
    assert read(url, "SELECT status FROM jobs") == [("paused",)]


async def test_a_trip_whose_write_lost_to_a_ramp_step_is_tried_again_at_the_next_poll(
    migrated_postgres_url: str,
) -> None:
    """A paced job's coordinator writes its ramp steps into ``rollout_state`` too: a trip
    decided on a poll's read loses its conditional write when a step lands in between. The
    criterion still holds on the same counts: the next poll trips it, though no outcome
    came meanwhile (a job whose last outcomes are in would otherwise never stop)."""
    url = migrated_postgres_url
    with trio.fail_after(GUARD):
        job_id = await stored_job(url, devices=1)
    connection = connect_postgres(url)
    connection.execute(
        "UPDATE jobs SET options = ?, outcomes = ?",
        (
            '{"rollout":{"maxInFlight":1,"ramp":{"factor":2,"afterSucceeded":1,'
            '"maxInFlight":4}},"abort":[{"on":"error","thresholdPercent":50}]}',
            '{"resolved":{"200":1},"error":{"500":3},"timeout":0,"expired":0,"cancelled":0}',
        ),
    )
    control = JobWideControl()
    try:
        polled = read_unfinished(connection)
        connection.execute(_SAVE_RAMP_STEPS, (1, job_id))  # the coordinator, in between
        control.check(connection, polled, NOW)
        assert control.trips == 0  # the row moved on: not written
        control.check(connection, read_unfinished(connection), NOW)
        assert control.trips == 1
    finally:
        connection.close()
    ((ending, state),) = read(url, "SELECT ending, rollout_state FROM jobs")
    assert ending == "aborted"
    assert msgspec.json.decode(state) == {"ramp_steps": 1, "tripped": [0], "stopped_by": 0}
