"""``GET /fleet`` and ``/metrics`` on clustered gateways (issue 16): each gateway reports the
requests its shards' fleets sent and heard answered, so the gateways' figures add up to the
job's tasks, and keeps them when a joining gateway takes shards over. Real clustered gateways
in this process (the fixtures of test_cluster_control.py) on one mosquitto and one throwaway
PostgreSQL, simulated devices on real MQTT connections; a small fleet, about 3 s.
"""

from __future__ import annotations

from typing import Any

import httpx
import trio

from pm.cluster import shard_of
from pm.gateway import Gateway
from tests.integration.brokers import MosquittoBroker
from tests.integration.gateways import GatewayFactory
from tests.integration.test_cluster_control import (
    GUARD,
    SHARDS,
    ClusterFactory,
    client,
    cluster_settings,
    dispatcher,
    start_cluster,
    start_devices,
)
from tests.job_api import entry, wait_final
from tests.served_app import samples
from tests.waiting import poll_until

__all__ = ["start_cluster"]  # the fixture, for pytest


def one_device_per_shard() -> list[str]:
    """A device on each shard: whichever shards move, the tasks of some moved with them."""
    devices: dict[int, str] = {}
    n = 0
    while len(devices) < SHARDS:
        devices.setdefault(shard_of(f"f{n:03d}", SHARDS), f"f{n:03d}")
        n += 1
    return sorted(devices.values())


async def figures(gateway: Gateway) -> tuple[dict[str, Any], dict[Any, float]]:
    """What ``GET /fleet`` and ``/metrics`` answer on ``gateway``."""
    async with client(gateway) as http:
        fleet: httpx.Response = await http.get("/fleet")
        metrics = await http.get("/metrics")
    return fleet.json(), samples(metrics.text)


async def test_the_gateways_fleet_figures_add_up_to_the_jobs_tasks_and_survive_a_join(
    start_cluster: ClusterFactory,
    start_gateway: GatewayFactory,
    mosquitto: MosquittoBroker,
    migrated_postgres_url: str,
    nursery: trio.Nursery,
) -> None:
    steps = 2
    with trio.fail_after(GUARD):
        cluster = await start_cluster(2)
        devices = one_device_per_shard()
        simulator = await start_devices(nursery, mosquitto, devices, latency=0.02)
        total = len(devices) * steps
        async with client(cluster[0]) as poster:
            batch = [entry(devices, f"/step/{step}") for step in range(steps)]
            created = await poster.post("/jobs", json={"batch": batch})
            assert created.status_code == 200, created.text
            final = await wait_final(poster, created.json()["id"])
        assert (final["status"], final["finishCount"]) == ("resolved", total), final
        # No takeover, no reconnect: each task was sent once, by the gateway serving its device.
        assert simulator.stats.received == total
        before = [await figures(gateway) for gateway in cluster]

        # A third gateway joins: each of the two stops serving some shards, whose fleets sent
        # some of the tasks (a device on every shard). Their counts stay this gateway's.
        served = [len(dispatcher(gateway).services) for gateway in cluster]
        joined = await start_gateway(**cluster_settings("gw-2", mosquitto, migrated_postgres_url))
        await poll_until(
            lambda: all(
                len(dispatcher(gateway).services) < count
                for gateway, count in zip(cluster, served, strict=True)
            ),
            interval=0.05,
        )
        after = [await figures(gateway) for gateway in [*cluster, joined]]

    fleets = [fleet for fleet, _ in before]
    dispatched = [fleet["tasksDispatched"] for fleet in fleets]
    answered = [fleet["tasksAnswered"] for fleet in fleets]
    # Each gateway served shards holding some of the devices, so each sent some of the tasks.
    assert all(count > 0 for count in dispatched), dispatched
    assert sum(dispatched) == sum(answered) == total, fleets
    assert [fleet["tasksInFlight"] for fleet in fleets] == [0, 0], fleets
    # /metrics says the same, gateway by gateway (a sum over gateways gives the cluster's).
    for fleet, metrics in before:
        assert metrics[("pm_tasks_dispatched_total", ())] == fleet["tasksDispatched"], metrics
        assert metrics[("pm_tasks_answered_total", ())] == fleet["tasksAnswered"], metrics
        assert metrics[("pm_tasks_in_flight", ())] == 0, metrics
    # Devices are the cluster's: the same figure from either gateway.
    assert [fleet["devicesOnline"] for fleet in fleets] == [len(devices)] * 2, fleets

    # Counters never go backwards when shards move away; the newcomer sent nothing.
    assert [fleet["tasksDispatched"] for fleet, _ in after] == [*dispatched, 0], after
    assert [fleet["tasksAnswered"] for fleet, _ in after] == [*answered, 0], after
    assert [m[("pm_tasks_dispatched_total", ())] for _, m in after] == [*dispatched, 0]
