"""Queues that never wedge, end to end: REST in, the real embedded broker, simulated devices
on their own MQTT connections. The offline device is known offline at first (as if seen
before); it comes online by connecting, which the embedded broker reports itself.

Real sockets, so real time: a short expiresIn with wide margins, and a hang guard.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from pm.presence import Presence
from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.job_api import assert_consistent, entry, post_job, wait_final
from tests.waiting import poll_until

EXPIRES_IN = 3.0  # wide: the online tasks must resolve well before it, even under load


async def test_an_offline_device_holds_no_one_up_and_its_unsent_task_expires(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    """Device offline, job A to it, job B to it and to online devices with a short
    expiresIn: B's other tasks resolve at once, B's task to the offline device ends expired
    at its expiry without reaching it, A's task is sent when the device comes online."""
    with trio.fail_after(40):
        gateway = await start_gateway()
        engine = gateway.engine
        assert engine is not None
        engine.presence.update("off", Presence.OFFLINE, time.time())
        await start_simulator(gateway, ["on1", "on2"])
        client = http(gateway)
        job_a = await post_job(client, entry("off", "/a"))
        job_b = await post_job(client, entry(["off", "on1", "on2"], "/b"), expiresIn=EXPIRES_IN)
        posted = trio.current_time()

        running_b = engine.get(job_b["id"])
        assert running_b is not None
        await poll_until(
            lambda: (
                [t.status for t in running_b.record.tasks] == ["pending", "resolved", "resolved"]
            )
        )
        assert trio.current_time() - posted < EXPIRES_IN  # at once, not after the offline one
        pending = (await client.get(f"/jobs/{job_a['id']}", params={"collection": "true"})).json()
        assert pending["collection"][0]["__task"]["waiting"] == "device-offline"
        assert pending["pendingCount"] == 1

        finished_b = await wait_final(client, job_b["id"])
        assert trio.current_time() - posted >= EXPIRES_IN - 0.5
        off_task = finished_b["collection"][0]
        assert off_task["__task"]["status"] == "expired"
        assert off_task["__task"]["expiresAt"] is not None
        assert (finished_b["expiredCount"], finished_b["errorCount"]) == (1, 1)
        assert_consistent(finished_b)
        assert engine.presence.presence("off") is Presence.OFFLINE

        # The device connects: the broker says it is online, and only A's request reaches it
        # (B's expired one was never published, so nothing retained can deliver it either).
        simulator = await start_simulator(gateway, ["off"])
        finished_a = await wait_final(client, job_a["id"])
        assert finished_a["status"] == "resolved"
        assert finished_a["collection"][0]["__task"]["status"] == "resolved"
        await poll_until(lambda: len(simulator.received_by("off")) == 1)
        assert [r["resource"] for r in simulator.received_by("off")] == ["/a"]
