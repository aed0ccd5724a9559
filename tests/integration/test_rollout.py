"""A rollout end to end: REST in, the real embedded broker, simulated devices (multiplexed on
a few MQTT connections) that record how many requests they work on at once.

Real sockets, so real time: wide margins, and a hang guard per test.
"""

from __future__ import annotations

from typing import Any

import trio

from pm.simulator import generate_mac_ids
from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.job_api import assert_consistent, entry, post_job, wait_final

WINDOW = 50
MIN_SETTLED = 100


async def test_a_window_of_50_and_an_abort_at_5_percent_stop_a_failing_rollout(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(60):
        gateway = await start_gateway()
        devices = generate_mac_ids(2000)
        # 10% of the requests fail (503), each device works 20 ms on a request.
        simulator = await start_simulator(
            gateway, devices, connections=20, latency=0.02, error_rate=0.1, error_code=503, seed=3
        )
        client = http(gateway)
        created = await post_job(
            client,
            entry(devices, "/firmware"),
            rollout={"maxInFlight": WINDOW},
            abort=[{"on": "error", "thresholdPercent": 5, "minSettled": MIN_SETTLED}],
        )
        assert created["totalCount"] == 2000
        job = await wait_final(client, created["id"])
        assert_consistent(job)
        assert job["status"] == "aborted" and job["stoppedBy"] == 0
        (criterion,) = job["abort"]
        assert criterion["tripped"] and criterion["thresholdPercent"] == 5
        statuses = [task["__task"]["status"] for task in job["collection"]]
        sent = statuses.count("resolved") + statuses.count("error")
        # Every task the devices received has its outcome; every other one was cancelled.
        assert sent == simulator.stats.received == simulator.stats.answered
        assert statuses.count("cancelled") == 2000 - sent
        assert criterion["settled"] == sent and criterion["matching"] == statuses.count("error")
        # The trip comes with the minimum sample (10% fail, so 100 outcomes are past 5%); after
        # it, only the tasks already in flight (at most the window) were sent.
        assert MIN_SETTLED <= sent <= MIN_SETTLED + WINDOW
        # The devices never worked on more than the window at once.
        assert 0 < simulator.stats.max_working <= WINDOW
        assert simulator.stats.overlaps == 0
