"""``GET /fleet`` and ``/metrics`` on clustered gateways (issue 16): each gateway reports the
requests its shards' fleets sent and heard answered, so the gateways' figures add up to the
job's tasks. Real clustered gateways in this process (the fixtures of
test_cluster_control.py) on one mosquitto and one throwaway PostgreSQL, simulated devices on
real MQTT connections; a small fleet, about 2 s.
"""

from __future__ import annotations

import trio

from tests.integration.brokers import MosquittoBroker
from tests.integration.test_cluster_control import (
    GUARD,
    ClusterFactory,
    client,
    devices_on,
    dispatcher,
    start_cluster,
    start_devices,
)
from tests.job_api import entry, wait_final
from tests.served_app import samples

__all__ = ["start_cluster"]  # the fixture, for pytest


async def test_the_gateways_fleet_figures_add_up_to_the_jobs_tasks(
    start_cluster: ClusterFactory, mosquitto: MosquittoBroker, nursery: trio.Nursery
) -> None:
    steps = 2
    with trio.fail_after(GUARD):
        cluster = await start_cluster(2)
        devices = devices_on(cluster, 3, "f")
        simulator = await start_devices(nursery, mosquitto, devices, latency=0.02)
        total = len(devices) * steps
        async with client(cluster[0]) as poster:
            created = await poster.post(
                "/jobs", json={"batch": [entry(devices, f"/step/{s}") for s in range(steps)]}
            )
            assert created.status_code == 200, created.text
            final = await wait_final(poster, created.json()["id"])
        assert (final["status"], final["finishCount"]) == ("resolved", total), final
        # No takeover, no reconnect: each task was sent once, by the gateway serving its device.
        assert simulator.stats.received == total
        fleets, metrics = [], []
        for gateway in cluster:
            async with client(gateway) as http:
                fleets.append((await http.get("/fleet")).json())
                metrics.append(samples((await http.get("/metrics")).text))
    dispatched = [fleet["tasksDispatched"] for fleet in fleets]
    answered = [fleet["tasksAnswered"] for fleet in fleets]
    # Each gateway served shards holding some of the devices, so each sent some of the tasks.
    assert all(len(dispatcher(gateway).services) > 0 for gateway in cluster)
    assert all(count > 0 for count in dispatched), dispatched
    assert sum(dispatched) == sum(answered) == total, fleets
    assert [fleet["tasksInFlight"] for fleet in fleets] == [0, 0], fleets
    # /metrics says the same, gateway by gateway (a sum over gateways gives the cluster's).
    assert [m[("pm_tasks_dispatched_total", ())] for m in metrics] == dispatched, metrics
    assert [m[("pm_tasks_answered_total", ())] for m in metrics] == answered, metrics
    assert [m[("pm_tasks_in_flight", ())] for m in metrics] == [0, 0]
    # Devices and running jobs are the cluster's: the same figures from either gateway.
    assert [fleet["devicesOnline"] for fleet in fleets] == [len(devices)] * 2, fleets
