"""Job-wide control and options in a cluster (issue 16): real clustered gateways in this
process (each its own MQTT client, engine, shard dispatcher and HTTP server) on one
mosquitto and one throwaway PostgreSQL database, simulated devices on real MQTT connections.

A job posted to one gateway is paused, resumed and cancelled through others; an abort
criterion trips on the job-wide counts when no gateway alone has enough outcomes; failed
attempts are retried on every gateway. Small fleets: each test runs in 2-4 s, which is what it
takes for gateways that join one after the other to split the shards evenly (a lease round or
two, ``lease_ttl / 3`` each) and for a job to run a few rounds of sends at the devices'
latency (the control must land mid-job, between rounds).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio

from pm.cluster import shard_of
from pm.cluster_engine import ClusterEngine
from pm.gateway import Gateway
from pm.schedule import epoch_to_datetime
from pm.simulator import Simulator, SimulatorSettings, run_simulator
from tests.integration.brokers import MosquittoBroker
from tests.integration.gateways import GatewayFactory
from tests.job_api import entry, wait_final
from tests.stores import read
from tests.waiting import poll_until

SHARDS = 8
# A lease round each lease_ttl / 3: a gateway that joins gets its share within a round or two.
LEASE_TTL = 1.5
COMMIT_INTERVAL = 0.02
GUARD = 60.0

ClusterFactory = Callable[[int], Awaitable[list[Gateway]]]


@pytest.fixture
def start_cluster(
    start_gateway: GatewayFactory, mosquitto: MosquittoBroker, migrated_postgres_url: str
) -> ClusterFactory:
    """``await start_cluster(3)``: that many clustered gateways, ``gw-0`` .. , returned once
    each serves its share of the shards."""

    async def start(count: int) -> list[Gateway]:
        gateways = [
            await start_gateway(**cluster_settings(f"gw-{n}", mosquitto, migrated_postgres_url))
            for n in range(count)
        ]
        share = -(-SHARDS // count)
        # A joining gateway gets shards as the others release their excess (a lease round,
        # lease_ttl / 3, each): wait until the split is even.
        await poll_until(
            lambda: (
                all(len(dispatcher(g).services) >= SHARDS - share * (count - 1) for g in gateways)
                and sum(len(dispatcher(g).services) for g in gateways) == SHARDS
            ),
            interval=0.05,
        )
        return gateways

    return start


def cluster_settings(gateway_id: str, mosquitto: MosquittoBroker, url: str) -> dict[str, Any]:
    """The configuration sections of one clustered gateway of these tests."""
    return {
        "cluster": {
            "enabled": True,
            "gateway_id": gateway_id,
            "shards": SHARDS,
            "lease_ttl": LEASE_TTL,
        },
        "broker": {"embedded": False},
        "mqtt": {
            "host": mosquitto.host,
            "port": mosquitto.port,
            "client_id": f"pm-{uuid.uuid4().hex[:8]}",
        },
        "store": {"url": url, "commit_interval": COMMIT_INTERVAL},
        "topics": {"response": "/remote/{device}/response/{gateway}"},
    }


def iso(epoch: float) -> str:
    return epoch_to_datetime(epoch).isoformat()


def dispatcher(gateway: Gateway) -> Any:  # noqa: ANN401
    engine = gateway.engine
    assert isinstance(engine, ClusterEngine) and engine.dispatcher is not None
    return engine.dispatcher


def served_by(gateway: Gateway, device: str) -> bool:
    return shard_of(device, SHARDS) in dispatcher(gateway).services


def devices_on(gateways: list[Gateway], each: int, prefix: str) -> list[str]:
    """``each`` device names served by every one of ``gateways`` (so each gets work)."""
    picked: dict[str, list[str]] = {gateway.config.cluster.gateway_id: [] for gateway in gateways}
    n = 0
    while any(len(names) < each for names in picked.values()):
        device = f"{prefix}{n:03d}"
        n += 1
        for gateway in gateways:
            names = picked[gateway.config.cluster.gateway_id]
            if served_by(gateway, device) and len(names) < each:
                names.append(device)
    return [device for names in picked.values() for device in names]


async def start_devices(
    nursery: trio.Nursery, broker: MosquittoBroker, devices: list[str], **settings: Any
) -> Simulator:
    return await nursery.start(
        run_simulator,
        SimulatorSettings(
            host=broker.host,
            port=broker.port,
            devices=devices,
            record_requests=True,
            connections=2,
            **settings,
        ),
    )


async def turns(gateways: list[Gateway], count: int) -> None:
    """Return once every gateway's dispatcher has polled ``count`` more times."""
    targets = [(dispatcher(gateway), dispatcher(gateway).turns + count) for gateway in gateways]
    await poll_until(lambda: all(d.turns >= target for d, target in targets), interval=0.01)


def client(gateway: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.http_url, timeout=10)


def gateways_that_sent(
    simulator: Simulator, devices: list[str], after: dict[str, int] | None = None
) -> set[str]:
    """The gateway ids in the tunnels of the requests the devices received (each device's
    from its index in ``after``, if given)."""
    return {
        request["tunnel"].rsplit("/", 1)[1]
        for device in devices
        for request in simulator.received_by(device)[(after or {}).get(device, 0) :]
    }


async def test_a_job_posted_to_one_gateway_is_paused_on_another_and_resumed_on_a_third(
    start_cluster: ClusterFactory, mosquitto: MosquittoBroker, nursery: trio.Nursery
) -> None:
    steps = 6
    with trio.fail_after(GUARD):
        cluster = await start_cluster(3)
        posted_to, pauser, resumer = cluster
        devices = devices_on(cluster, 3, "p")
        simulator = await start_devices(nursery, mosquitto, devices, latency=0.2)
        batch = [entry(devices, f"/step/{step}") for step in range(steps)]
        total = len(devices) * steps
        async with client(posted_to) as poster, client(pauser) as a, client(resumer) as b:
            created = (await poster.post("/jobs", json={"batch": batch})).json()
            job_id = created["id"]
            await poll_until(lambda: simulator.stats.answered >= len(devices))
            # Two gateways pause at once: one wins, the other is told it is paused already.
            answers: list[httpx.Response] = []

            async def pause(through: httpx.AsyncClient) -> None:
                answers.append(await through.post(f"/jobs/{job_id}/pause", json={}))

            async with trio.open_nursery() as racing:
                racing.start_soon(pause, a)
                racing.start_soon(pause, b)
            codes = sorted(answer.status_code for answer in answers)
            assert codes == [200, 409], [answer.text for answer in answers]
            (won,) = [answer.json() for answer in answers if answer.status_code == 200]
            (lost,) = [answer.json() for answer in answers if answer.status_code == 409]
            assert won["status"] == "paused" and won["holds"] == ["paused"], won
            assert lost["message"] == f"job {job_id} is already held (paused)", lost

            # Every gateway stops sending: the requests in flight settle, then nothing new
            # goes out while each gateway polls a few more times.
            await poll_until(lambda: paused_everywhere(cluster, job_id))
            received = simulator.stats.received
            await turns(cluster, 5)
            assert simulator.stats.received == received, "a request left a paused job"
            paused = (await a.get(f"/jobs/{job_id}")).json()
            assert paused["status"] == "paused" and paused["sentCount"] == 0, paused
            assert 0 < paused["doneCount"] < total, paused
            per_device = {device: len(simulator.received_by(device)) for device in devices}

            resumed = await b.post(f"/jobs/{job_id}/resume", json={})
            assert resumed.status_code == 200, resumed.text
            assert resumed.json()["status"] == "dispatching" and resumed.json()["holds"] == []
            again = await a.post(f"/jobs/{job_id}/resume", json={})
            assert again.status_code == 409, again.text
            assert again.json()["message"] == (
                f"job {job_id} is not held (paused): it is dispatching"
            )
            final = await wait_final(poster, job_id)
    assert (final["status"], final["finishCount"], final["doneCount"]) == (
        "resolved",
        total,
        total,
    ), final
    # After the resume, every gateway sent again (each serves some of the devices).
    after = gateways_that_sent(simulator, devices, per_device)
    assert after == {"gw-0", "gw-1", "gw-2"}, after
    assert simulator.stats.overlaps == 0


def paused_everywhere(cluster: list[Gateway], job_id: int) -> bool:
    """Every part of the job on every gateway follows its pause, and no request is in
    flight on any of them."""
    services = [service for gateway in cluster for service in dispatcher(gateway).services.values()]
    parts = [service.jobs[job_id] for service in services if job_id in service.jobs]
    return all(part.followed.paused for part in parts) and not any(
        service.fleet.in_flight for service in services
    )


def stored_tasks(url: str, job_id: int) -> list[tuple[Any, ...]]:
    """(device, status, attempts) of the job's task rows, in id order."""
    return read(
        url, f"SELECT device, status, attempts FROM tasks WHERE job_id = {job_id} ORDER BY id"
    )


async def test_a_job_cancelled_through_a_third_gateway_ends_cancelled_with_the_right_counts(
    start_cluster: ClusterFactory,
    mosquitto: MosquittoBroker,
    migrated_postgres_url: str,
    nursery: trio.Nursery,
) -> None:
    steps = 8
    with trio.fail_after(GUARD):
        cluster = await start_cluster(3)
        devices = devices_on(cluster, 3, "c")
        simulator = await start_devices(nursery, mosquitto, devices, latency=0.2)
        total = len(devices) * steps
        batch = [entry(devices, f"/step/{step}") for step in range(steps)]
        async with client(cluster[0]) as poster, client(cluster[2]) as third:
            job_id = (await poster.post("/jobs", json={"batch": batch})).json()["id"]
            await poll_until(lambda: simulator.stats.answered >= 2 * len(devices))
            cancelled = await third.post(f"/jobs/{job_id}/cancel", json={})
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["finishAt"] is None  # tasks in flight finish first
            again = await third.post(f"/jobs/{job_id}/cancel", json={})
            assert again.status_code == 409, again.text
            assert "nothing to cancel" in again.json()["message"]
            final = await wait_final(third, job_id)
            received = simulator.stats.received
            # Nothing leaves for the ended job afterwards (each gateway polls again).
            await turns(cluster, 3)
            assert simulator.stats.received == received
            refused = await poster.post(f"/jobs/{job_id}/pause", json={})
            assert refused.status_code == 409, refused.text
    rows = stored_tasks(migrated_postgres_url, job_id)
    resolved = sum(status == "resolved" for _, status, _ in rows)
    stopped = sum(status == "cancelled" for _, status, _ in rows)
    assert resolved + stopped == total, rows
    assert final["status"] == "cancelled" and final["outcome"] == "partial", final
    assert (final["finishCount"], final["errorCount"]) == (resolved, stopped), final
    assert final["outcomes"]["cancelled"] == stopped and stopped > 0, final
    # Each task answered was received; none cancelled was (its device never got it).
    assert resolved == len({(r["id"]) for d in devices for r in simulator.received_by(d)})
    assert gateways_that_sent(simulator, devices) == {"gw-0", "gw-1", "gw-2"}


async def test_deleting_a_running_job_through_another_gateway_ends_its_parts_everywhere(
    start_cluster: ClusterFactory,
    mosquitto: MosquittoBroker,
    migrated_postgres_url: str,
    nursery: trio.Nursery,
) -> None:
    steps = 8
    with trio.fail_after(GUARD):
        cluster = await start_cluster(2)
        devices = devices_on(cluster, 3, "d")
        simulator = await start_devices(nursery, mosquitto, devices, latency=0.2)
        batch = [entry(devices, f"/step/{step}") for step in range(steps)]
        async with client(cluster[0]) as poster, client(cluster[1]) as other:
            job_id = (await poster.post("/jobs", json={"batch": batch})).json()["id"]
            await poll_until(lambda: simulator.stats.answered >= len(devices))
            deleted = await other.delete(f"/jobs/{job_id}")
            assert deleted.status_code == 200, deleted.text
            view = deleted.json()
            assert view["status"] == "cancelled" and view["finishAt"] is not None, view
            assert view["doneCount"] == view["totalCount"] == len(devices) * steps, view
            assert (await poster.get(f"/jobs/{job_id}")).status_code == 404
            # Every gateway's parts of it end (their rows are gone), without taking the
            # answers still on their way for a sign of a lost lease.
            await poll_until(
                lambda: (
                    not any(
                        job_id in service.jobs
                        for gateway in cluster
                        for service in dispatcher(gateway).services.values()
                    )
                )
            )
            received = simulator.stats.received
            await turns(cluster, 3)
            assert simulator.stats.received == received
    assert read(migrated_postgres_url, f"SELECT count(*) FROM tasks WHERE job_id = {job_id}") == [
        (0,)
    ]
    for gateway in cluster:
        assert len(dispatcher(gateway).services) == SHARDS // 2, "a shard was stopped as fenced"
        engine = gateway.engine
        assert isinstance(engine, ClusterEngine) and engine.writes.refused_rows == 0


async def test_an_abort_criterion_trips_on_the_job_wide_counts_when_no_gateway_alone_could(
    start_cluster: ClusterFactory,
    mosquitto: MosquittoBroker,
    migrated_postgres_url: str,
    nursery: trio.Nursery,
) -> None:
    """Every answer is an error. Each gateway serves 4 devices, so after two rounds of sends
    each has 8 outcomes and the cluster 16: the criterion (minSettled 12) can only hold on
    the job-wide counts. The trip reaches every gateway within a few commit windows, well
    inside a round of sends (latency 0.5 s): the job ends ``aborted`` with most of its tasks
    never sent."""
    steps = 10
    min_settled = 12
    with trio.fail_after(GUARD):
        cluster = await start_cluster(2)
        devices = devices_on(cluster, 4, "a")
        per_gateway = len(devices) // 2
        assert 2 * per_gateway < min_settled <= 2 * len(devices), "no test"
        simulator = await start_devices(
            nursery, mosquitto, devices, latency=0.5, error_rate=1.0, error_code=500
        )
        body = {
            "batch": [entry(devices, f"/step/{step}") for step in range(steps)],
            "abort": [{"on": "error", "thresholdPercent": 50, "minSettled": min_settled}],
        }
        async with client(cluster[0]) as poster, client(cluster[1]) as other:
            created = await poster.post("/jobs", json=body)
            assert created.status_code == 200, created.text
            job_id = created.json()["id"]
            final = await wait_final(other, job_id)
    total = len(devices) * steps
    rows = stored_tasks(migrated_postgres_url, job_id)
    errors = sum(status == "error" for _, status, _ in rows)
    assert final["status"] == "aborted" and final["stoppedBy"] == 0, final
    assert errors + sum(status == "cancelled" for _, status, _ in rows) == total
    # Tripped on the round that reached minSettled (the second); the round already sent
    # when it tripped finishes. One more round of slack for a loaded machine.
    rounds = -(-min_settled // len(devices))
    assert min_settled <= errors <= (rounds + 2) * len(devices), errors
    assert gateways_that_sent(simulator, devices) == {"gw-0", "gw-1"}
    print(f"\nabort tripped job-wide: {errors} of {total} tasks sent (minSettled {min_settled})")


async def test_failed_attempts_are_retried_on_every_gateway_of_a_cluster(
    start_cluster: ClusterFactory,
    mosquitto: MosquittoBroker,
    migrated_postgres_url: str,
    nursery: trio.Nursery,
) -> None:
    steps = 3
    with trio.fail_after(GUARD):
        cluster = await start_cluster(2)
        devices = devices_on(cluster, 4, "r")
        simulator = await start_devices(
            nursery, mosquitto, devices, latency=0.02, error_rate=0.4, error_code=503, seed=7
        )
        body = {
            "batch": [entry(devices, f"/step/{step}") for step in range(steps)],
            "retry": {"on": ["error"], "codes": [503], "max": 10, "delay": 0.05, "factor": 1},
        }
        async with client(cluster[1]) as poster, client(cluster[0]) as other:
            created = await poster.post("/jobs", json=body)
            assert created.status_code == 200, created.text
            final = await wait_final(poster, created.json()["id"])
            (listed,) = [
                job for job in (await other.get("/jobs")).json() if job["id"] == final["id"]
            ]
    assert (final["status"], final["finishCount"]) == ("resolved", len(devices) * steps), final
    rows = stored_tasks(migrated_postgres_url, final["id"])
    retried = {device for device, _, attempts in rows if attempts > 1}
    # Job-wide, from the tasks (GET /jobs/{id}) and from the job's row (GET /jobs).
    retried_tasks = sum(attempts > 1 for _, _, attempts in rows)
    assert final["retriedCount"] == listed["retriedCount"] == retried_tasks > 0, listed
    # Devices of both gateways had attempts retried (each gateway retries its own tasks).
    assert {any(served_by(gateway, device) for device in retried) for gateway in cluster} == {
        True
    }, retried
    assert simulator.stats.overlaps == 0


async def test_a_schedule_starts_and_pauses_a_job_on_every_gateway_at_the_same_instants(
    start_cluster: ClusterFactory, mosquitto: MosquittoBroker, nursery: trio.Nursery
) -> None:
    """``startAt`` in a second, ``endAt`` a second later (``endBehavior`` pause by default),
    slow devices: nothing reaches a device before ``startAt``; at ``endAt`` every gateway
    stops sending, the job reads ``paused`` through any gateway, and a resume is refused as
    on one gateway."""
    steps = 8
    with trio.fail_after(GUARD):
        cluster = await start_cluster(2)
        devices = devices_on(cluster, 3, "s")
        simulator = await start_devices(nursery, mosquitto, devices, latency=0.3)
        start_at = time.time() + 1.0
        end_at = start_at + 1.0
        body = {
            "batch": [entry(devices, f"/step/{step}") for step in range(steps)],
            "schedule": {"startAt": iso(start_at), "endAt": iso(end_at)},
        }
        async with client(cluster[0]) as poster, client(cluster[1]) as other:
            created = await poster.post("/jobs", json=body)
            assert created.status_code == 200, created.text
            job_id = created.json()["id"]
            await poll_until(lambda: simulator.stats.received > 0)
            assert time.time() >= start_at, "a request left before startAt"
            assert gateways_that_sent(simulator, devices) <= {"gw-0", "gw-1"}

            async def job() -> dict[str, Any]:
                return (await other.get(f"/jobs/{job_id}")).json()

            while (await job())["status"] != "paused":  # noqa: ASYNC110 - a remote state
                await trio.sleep(0.05)
            assert time.time() >= end_at
            await poll_until(lambda: paused_everywhere(cluster, job_id))
            received = simulator.stats.received
            await turns(cluster, 3)
            assert simulator.stats.received == received, "a request left after endAt"
            paused = await job()
            # (A job read from the database has its schedule's holds from the clock: the
            # ended schedule's "outside-window" beside the pause.)
            assert "paused" in paused["holds"], paused
            assert 0 < paused["doneCount"] < paused["totalCount"], paused
            refused = await poster.post(f"/jobs/{job_id}/resume", json={})
            assert refused.status_code == 409 and "its schedule ended" in refused.text
    assert gateways_that_sent(simulator, devices) == {"gw-0", "gw-1"}
