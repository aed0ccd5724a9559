"""A full disk under a running gateway: real gateway, embedded broker, simulated devices, and
the database on a small tmpfs filled to its last byte mid-job (a real fault, not a mock).

Real sockets and files, so real time: a hang guard, and waits on what the gateway reports.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import trio

from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.integration.readiness import readiness, wait_for_readiness
from tests.job_api import assert_consistent, entry, post_job, wait_final
from tests.small_filesystem import SmallFilesystem
from tests.waiting import poll_until

# Each device answers after this many seconds, one task at a time: with ENTRIES tasks per
# device the job lasts ENTRIES * LATENCY at the very least, so the disk fills mid-job.
LATENCY = 0.2
ENTRIES = 6


async def test_a_full_disk_mid_job_refuses_new_jobs_keeps_reads_and_loses_no_result(
    disk: SmallFilesystem,
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: Any,
) -> None:
    database = disk.path / "pm.db"
    with trio.fail_after(60):
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

        disk.fill()
        answered_before_the_fault = simulator.stats.answered
        body = await wait_for_readiness(client, 503)
        assert answered_before_the_fault < total  # the fault really came mid-job
        assert body["ready"] is False
        assert [reason.split(":")[0] for reason in body["reasons"]] == ["store"], body
        assert "full" in body["reasons"][0]

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
        # Still full: nothing of what the job settled after the fault is on disk yet.
        assert store.fault is not None and store.failed_commits >= 1
        metrics = (await client.get("/metrics")).text
        assert "\npm_store_writable 0.0\n" in metrics

        disk.free()
        assert await wait_for_readiness(client, 200) == {"ready": True, "reasons": []}
        assert "\npm_store_writable 1.0\n" in (await client.get("/metrics")).text
        again = await post_job(client, entry(devices[0], "/after"))
        assert again["id"] == created["id"] + 1
        await wait_final(client, again["id"])
        await store.sync()

    # Every result the API reported is in the database, as reported.
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
