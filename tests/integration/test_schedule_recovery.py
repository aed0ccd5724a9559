"""A scheduled job survives the gateway: a real `pm serve` SIGKILLed while the job waits for
its startAt, started again on the same database, holds it until then and runs it after."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime

import httpx
import trio

from tests.integration.test_recovery import GatewayProcess, gateway_process, get_job, wait_ready
from tests.job_api import entry, wait_final

__all__ = ["gateway_process"]  # the fixture, used by name

# Seconds from submit to startAt: room for a SIGKILL and a restart (about 2 s here) with a
# wide margin, so the job is still waiting when the restarted gateway first shows it.
START_DELAY = 8.0


async def test_a_job_killed_while_scheduled_is_still_scheduled_after_restart(
    gateway_process: GatewayProcess, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        gateway_process.start()
        async with httpx.AsyncClient(base_url=gateway_process.url, timeout=10) as client:
            await wait_ready(client, gateway_process)
            simulator = await gateway_process.start_devices(
                nursery, ["s1", "s2"], record_requests=True
            )
            start_at = time.time() + START_DELAY
            moment = datetime.fromtimestamp(start_at, UTC).isoformat()
            body = {"batch": [entry(["s1", "s2"])], "schedule": {"startAt": moment}}
            created = (await client.post("/jobs", json=body)).json()
            assert created["status"] == "scheduled"
            # A listing commits what is pending first: the job is on disk before the kill.
            listed = await client.get("/jobs", params={"status": "scheduled"})
            assert [view["id"] for view in listed.json()] == [created["id"]]

            gateway_process.signal(signal.SIGKILL)
            gateway_process.start()
            await wait_ready(client, gateway_process)
            resumed = await get_job(client, created["id"])
            assert time.time() < start_at, "the restart took longer than the margin: no test"
            assert (resumed["status"], resumed["holds"]) == ("scheduled", ["scheduled"])
            assert simulator.received_by("s1") == [] and simulator.received_by("s2") == []

            job = await wait_final(client, created["id"])
            assert (job["status"], job["finishCount"], job["outcome"]) == (
                "resolved", 2, "succeeded",
            )  # fmt: skip
            for task in job["collection"]:
                finished = datetime.fromisoformat(task["__task"]["finishAt"]).timestamp()
                assert finished >= start_at - 0.001
            assert len(simulator.received_by("s1")) == 1
