"""A reconnect storm in the test suite (issue 11 item 6, at 1,000 devices; ``bench/
reconnect_storm.py`` runs 10,000 with a broker restart): every device offline with a task
queued for it, then all of them connecting at once. Real embedded broker, real gateway, one
MQTT connection per simulated device.

Real sockets, so real time: a hang guard with a wide margin (the storm takes ~5-10 s here).
"""

from __future__ import annotations

import time
from typing import Any

import trio

from pm.presence import Presence
from pm.simulator import generate_mac_ids
from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.job_api import assert_consistent, entry, post_job, wait_final
from tests.waiting import poll_until

DEVICES = 1000
STORM_GUARD = 90.0  # seconds; wide: two cores shared with other work


async def test_a_thousand_offline_devices_connect_at_once_and_each_task_resolves_once(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    devices = generate_mac_ids(DEVICES)
    with trio.fail_after(STORM_GUARD):
        gateway = await start_gateway()
        engine = gateway.engine
        assert engine is not None
        # Known offline, as devices the gateway saw before its broker lost them.
        for device in devices:
            engine.presence.update(device, Presence.OFFLINE, time.time())
        client = http(gateway)
        job = await post_job(client, entry(devices, "/storm"))
        running = engine.get(job["id"])
        assert running is not None
        # Each device's queue takes its task up soon after the POST and says why it waits.
        await poll_until(
            lambda: {task.waiting for task in running.record.tasks} == {"device-offline"}
        )
        queued = (await client.get(f"/jobs/{job['id']}", params={"collection": "true"})).json()
        assert queued["pendingCount"] == DEVICES
        assert {task["__task"]["waiting"] for task in queued["collection"]} == {"device-offline"}

        # One connection per device, all started at once (the simulator opens 50 at a time).
        simulator = await start_simulator(gateway, devices)
        finished = await wait_final(client, job["id"])
        # Answers are published before the job is final; the simulator's counters are exact.
        await poll_until(lambda: simulator.stats.answered >= DEVICES)

    assert finished["status"] == "resolved"
    assert (finished["finishCount"], finished["errorCount"]) == (DEVICES, 0)
    assert_consistent(finished)
    assert {task["__task"]["status"] for task in finished["collection"]} == {"resolved"}
    # Exactly once: each device got its one request once, and answered it once.
    assert all(len(simulator.received_by(device)) == 1 for device in devices)
    stats = simulator.stats
    assert (stats.received, stats.answered, stats.duplicates, stats.overlaps) == (
        DEVICES,
        DEVICES,
        0,
        0,
    )
    assert all(engine.presence.presence(device) is Presence.ONLINE for device in devices)
