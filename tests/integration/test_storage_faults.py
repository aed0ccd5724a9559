"""Storage faults under a running gateway: real gateway, embedded broker, simulated devices, and
the database on a filesystem that fails mid-job for real (not a mock): a small tmpfs filled to
its last byte, or an ext4 filesystem turned read-only by a disk error under the open database.

Real sockets and files, so real time: a hang guard, and waits on what the gateway reports.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from tests.ext4_image import Ext4Image
from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.integration.readiness import readiness, wait_for_readiness
from tests.job_api import assert_consistent, entry, post_job, wait_final
from tests.small_filesystem import SmallFilesystem
from tests.waiting import poll_until

# Each device answers after this many seconds, one task at a time: with ENTRIES tasks per
# device the job lasts ENTRIES * LATENCY at the very least, so the fault comes mid-job.
LATENCY = 0.2
ENTRIES = 6
# Hang guard: start, a job of ENTRIES * LATENCY, a few fault retries, a second job.
GUARD = 60


async def a_job_through_a_storage_fault(
    database: Path,
    start_fault: Callable[[], Awaitable[None]],
    end_fault: Callable[[], Awaitable[None]],
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: Any,
) -> str:
    """Run a job on a gateway whose database is ``database``; ``start_fault`` mid-job, check
    what the gateway does during the fault, ``end_fault``, check that it recovers by itself
    and that every result it reported is in the database file. Returns the fault's reason as
    ``/readyz`` gave it."""
    with trio.fail_after(GUARD):
        gateway = await start_gateway(store={"path": str(database)})
        assert gateway.engine is not None
        store = gateway.engine.store
        devices = [f"d{n}" for n in range(10)]
        simulator = await start_simulator(gateway, devices, latency=LATENCY)
        client = http(gateway)
        assert await readiness(client) == (200, {"ready": True, "reasons": []})
        created = await post_job(client, *[entry(devices, f"/n/{i}") for i in range(ENTRIES)])
        total = created["totalCount"]
        await poll_until(lambda: simulator.stats.answered >= len(devices))

        await start_fault()
        answered_before_the_fault = simulator.stats.answered
        body = await wait_for_readiness(client, 503)
        assert answered_before_the_fault < total  # the fault really came mid-job
        assert body["ready"] is False
        assert [reason.split(":")[0] for reason in body["reasons"]] == ["store"], body

        # New jobs are refused, clearly; nothing is created.
        refused = await client.post("/jobs", json={"batch": [entry(devices, "/later")]})
        assert refused.status_code == 503, refused.text
        assert "new jobs are refused while the job store cannot write" in refused.json()["message"]
        assert refused.headers["Retry-After"] == "1"
        # Reads go on, and the job goes on: devices answer, the API reports their results.
        job = await wait_final(client, created["id"])
        assert_consistent(job)
        assert job["finishCount"] == total
        listed = await client.get("/jobs")
        assert listed.status_code == 200
        assert [(j["id"], j["status"]) for j in listed.json()] == [(created["id"], "resolved")]
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json()["brokerConnected"] is True
        # Still failing: nothing of what the job settled after the fault is on disk yet.
        assert store.fault is not None and store.failed_commits >= 1
        metrics = (await client.get("/metrics")).text
        assert "\npm_store_writable 0.0\n" in metrics

        await end_fault()
        assert await wait_for_readiness(client, 200) == {"ready": True, "reasons": []}
        assert "\npm_store_writable 1.0\n" in (await client.get("/metrics")).text
        again = await post_job(client, entry(devices[0], "/after"))
        assert again["id"] == created["id"] + 1
        await wait_final(client, again["id"])
        await store.sync()

    # Every result the API reported is in the database file, as reported (a new connection,
    # as another process or a restarted gateway would read it).
    with sqlite3.connect(database) as connection:
        stored = dict(
            connection.execute(
                "SELECT id, status FROM tasks WHERE job_id = ? ORDER BY id", (created["id"],)
            ).fetchall()
        )
        job_row = connection.execute(
            "SELECT status, finish_count FROM jobs WHERE id = ?", (created["id"],)
        ).fetchone()
    assert stored == {task["id"]: task["__task"]["status"] for task in job["collection"]}
    assert job_row == ("resolved", total)
    reason: str = body["reasons"][0]
    return reason


async def test_a_full_disk_mid_job_refuses_new_jobs_keeps_reads_and_loses_no_result(
    disk: SmallFilesystem,
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: Any,
) -> None:
    async def fill() -> None:
        disk.fill()

    async def free() -> None:
        disk.free()

    reason = await a_job_through_a_storage_fault(
        disk.path / "pm.db", fill, free, start_gateway, start_simulator, http
    )
    assert "full" in reason


async def test_a_filesystem_turned_read_only_mid_job_is_survived_until_it_is_mounted_again(
    ext4: Ext4Image,
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: Any,
) -> None:
    """A disk error makes the kernel remount the database's filesystem read-only, open files
    included; the operator unmounts it, checks it and mounts it again at the same path. The
    gateway must let go of the failed filesystem (e2fsck waits until nothing holds it) and
    open the database again by its path, without a restart."""

    async def disk_error() -> None:
        await trio.to_thread.run_sync(ext4.fail)

    reason = await a_job_through_a_storage_fault(
        ext4.path / "pm.db", disk_error, ext4.repair, start_gateway, start_simulator, http
    )
    # SQLite's words for it: the write of the open file fails (EROFS or EIO), a new open
    # of the file is read-only.
    assert any(word in reason for word in ("SQLITE_IOERR", "SQLITE_READONLY")), reason
