"""Rollout windows, rates and the fleet budget held cluster-wide: real `pm serve` gateways on
one mosquitto and one PostgreSQL (the fixtures of test_cluster.py), simulated devices that
take a while to answer, so what is in flight shows. The simulator counts the most requests
its devices worked on at once (``max_working``): the job-wide figure the window bounds."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import trio

from pm.simulator import SimulatorSettings, run_simulator
from tests.integration.brokers import MosquittoBroker
from tests.integration.test_cluster import (
    GUARD,
    SHARDS,
    ClusterGateway,
    cluster,
    shard_owners,
    start_cluster,
)
from tests.job_api import entry, wait_final
from tests.waiting import poll_until

__all__ = ["cluster"]  # the fixture, for pytest


def coordinator_of(url: str, job_id: int) -> str:
    """The gateway holding the lease of the job's coordinating shard."""
    with psycopg.connect(url) as connection:
        row = connection.execute(
            "SELECT owner FROM shard_leases WHERE shard = %s", (job_id % SHARDS,)
        ).fetchone()
    assert row is not None and row[0] is not None
    return str(row[0])


def sent_times(url: str, job_id: int) -> list[float]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT sent_at FROM tasks WHERE job_id = %s ORDER BY sent_at", (job_id,)
        ).fetchall()
    return [float(sent_at) for (sent_at,) in rows]


async def test_a_jobs_window_and_ramp_hold_across_three_gateways_and_its_coordinators_sigkill(
    cluster: list[ClusterGateway],
    mosquitto: MosquittoBroker,
    migrated_postgres_url: str,
    nursery: trio.Nursery,
) -> None:
    """A job with ``maxInFlight: 2``, ramped to 4 after 4 tasks resolve, over 40 devices on
    every shard of three gateways: the devices never work on more than 2 of its requests at
    once before the step, nor on more than 4 after, and do on 4 (the window is used, not
    just respected); another gateway shows the job-wide step; the job finishes after its
    coordinator is SIGKILLed mid-job, still within the window."""
    url = migrated_postgres_url
    window = 4
    devices = [f"w{i:02d}" for i in range(40)]
    rollout = {
        "maxInFlight": 2,
        "ramp": {"factor": 2, "afterSucceeded": 4, "maxInFlight": window},
    }
    with trio.fail_after(GUARD):
        began = trio.current_time()
        await start_cluster(cluster, url)
        started = trio.current_time()
        simulator = await nursery.start(
            run_simulator,
            SimulatorSettings(
                host=mosquitto.host,
                port=mosquitto.port,
                devices=devices,
                latency=0.15,  # far below lease_ttl: a killed gateway's requests end first
                connections=4,
            ),
        )
        async with httpx.AsyncClient(timeout=10) as client:
            body = {"batch": [entry(devices, "/paced")], "rollout": rollout}
            response = await client.post(f"{cluster[0].url}/jobs", json=body)
            assert response.status_code == 200, response.text
            job_id = response.json()["id"]
            coordinator = next(g for g in cluster if g.name == coordinator_of(url, job_id))
            reader = next(g for g in cluster if g is not coordinator)
            # Fewer than 4 resolved: no step can have been taken yet.
            await poll_until(lambda: simulator.stats.answered >= 3)
            before_step = simulator.stats.max_working
            view: dict[str, Any] = {}

            async def stepped() -> bool:
                view.update((await client.get(f"{reader.url}/jobs/{job_id}")).json())
                return bool(view["rollout"]["rampSteps"] == 1)

            while not await stepped():  # noqa: ASYNC110 - the job row offers nothing to wait on
                await trio.sleep(0.02)
            coordinator.kill()
            killed_at = trio.current_time()
            answered_at_kill = simulator.stats.answered
            survivors = [g for g in cluster if g is not coordinator]
            async with httpx.AsyncClient(base_url=survivors[0].url, timeout=10) as other:
                job = await wait_final(other, job_id)
    print(
        f"\nstarted in {started - began:.2f} s, killed {coordinator.name} after"
        f" {killed_at - started:.2f} s ({answered_at_kill} answers), the job ended"
        f" {trio.current_time() - killed_at:.2f} s later; devices held at most"
        f" {before_step} requests at once before the step, {simulator.stats.max_working} in all"
    )
    assert answered_at_kill < len(devices), "the job ended before the kill: no test"
    assert before_step <= 2
    assert view["rollout"]["maxInFlight"] == window, view
    assert 0 <= view["rollout"]["inFlight"] <= window, view
    assert (job["status"], job["finishCount"]) == ("resolved", len(devices)), job
    assert simulator.stats.max_working == window, simulator.stats
    assert simulator.stats.overlaps == 0
    assert set(shard_owners(url)) == {g.name for g in survivors}


async def test_a_jobs_rate_holds_job_wide(
    cluster: list[ClusterGateway],
    mosquitto: MosquittoBroker,
    migrated_postgres_url: str,
    nursery: trio.Nursery,
) -> None:
    """``maxPerMinute: 600`` (10 a second) for 16 tasks on two gateways: job-wide, the sends
    spread over at least 1.5 s, and no span holds more sends than the rate allows plus one
    and a round's catch-up (two poll intervals, 0.04 s here), with a margin of one send for
    the time between a grant and the send it records. (Not with the fleet budget of the
    next test: the rate spaces hand-outs, as on a single gateway, and a task handed out that
    waits for a slot of the budget is sent when one frees, so sends can bunch.)"""
    url = migrated_postgres_url
    rate = 600.0
    devices = [f"r{i:02d}" for i in range(16)]
    with trio.fail_after(GUARD):
        await start_cluster(cluster[:2], url)
        await nursery.start(
            run_simulator,
            SimulatorSettings(
                host=mosquitto.host, port=mosquitto.port, devices=devices, connections=2
            ),
        )
        async with httpx.AsyncClient(timeout=10) as client:
            body = {"batch": [entry(devices, "/rated")], "rollout": {"maxPerMinute": rate}}
            response = await client.post(f"{cluster[0].url}/jobs", json=body)
            assert response.status_code == 200, response.text
            job_id = response.json()["id"]
            async with httpx.AsyncClient(base_url=cluster[1].url, timeout=10) as reader:
                job = await wait_final(reader, job_id)
    assert (job["status"], job["finishCount"]) == ("resolved", len(devices)), job
    times = sent_times(url, job_id)
    assert times[-1] - times[0] >= 1.5 - 0.1, times
    per_second = rate / 60
    for first in range(len(times)):
        for last in range(first + 1, len(times)):
            span = times[last] - times[first]
            allowed = (span + 0.04) * per_second + 1 + 1
            assert last - first + 1 <= allowed, (first, last, span)


async def test_the_fleet_budget_holds_across_two_gateways(
    cluster: list[ClusterGateway],
    mosquitto: MosquittoBroker,
    migrated_postgres_url: str,
    nursery: trio.Nursery,
) -> None:
    """``tasks.max_in_flight = 6`` with 4 shards on two gateways (2 shards, a share of 3
    each): two jobs' requests over 40 devices never reach more than 6 at once, and do."""
    url = migrated_postgres_url
    devices = [f"b{i:02d}" for i in range(40)]
    for gateway in cluster:
        gateway.environment["PM_CLUSTER_SHARDS"] = "4"
        gateway.environment["PM_TASKS_MAX_IN_FLIGHT"] = "6"
    with trio.fail_after(GUARD):
        await start_cluster(cluster[:2], url)
        await poll_until(lambda: sorted(shard_owners(url).values()) == [2, 2])
        simulator = await nursery.start(
            run_simulator,
            SimulatorSettings(
                host=mosquitto.host,
                port=mosquitto.port,
                devices=devices,
                latency=0.1,
                connections=4,
            ),
        )
        async with httpx.AsyncClient(timeout=10) as client:
            created = []
            for gateway, half in ((cluster[0], devices[:20]), (cluster[1], devices[20:])):
                body = {"batch": [entry(half, "/budget")]}
                response = await client.post(f"{gateway.url}/jobs", json=body)
                assert response.status_code == 200, response.text
                created.append(response.json()["id"])
        async with httpx.AsyncClient(base_url=cluster[0].url, timeout=10) as reader:
            jobs = [await wait_final(reader, job_id) for job_id in created]
    assert [job["status"] for job in jobs] == ["resolved", "resolved"], jobs
    assert simulator.stats.max_working == 6, simulator.stats
