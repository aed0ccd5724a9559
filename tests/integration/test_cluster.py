"""Several `pm serve` processes as one cluster: one mosquitto, one PostgreSQL database,
``cluster.enabled = true``, simulated devices on real MQTT connections. A job posted to one
gateway is dispatched by the gateways holding its devices' shards; a gateway SIGKILLed
mid-job loses its shards to the others after ``cluster.lease_ttl``, which finish its tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from pm.simulator import SimulatorSettings, run_simulator
from tests.integration.brokers import MosquittoBroker, free_port
from tests.integration.test_recovery import wait_ready
from tests.job_api import entry, wait_final
from tests.waiting import poll_until

LEASE_TTL = 2.0
SHARDS = 32
GUARD = 120.0


class ClusterGateway:
    """`python -m pm.cli serve` as one gateway of a cluster."""

    def __init__(self, directory: Path, name: str, broker: MosquittoBroker, url: str) -> None:
        self.name = name
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log = directory / f"{name}.log"
        self.environment = {
            **os.environ,
            "PM_CLUSTER_ENABLED": "true",
            "PM_CLUSTER_GATEWAY_ID": name,
            "PM_CLUSTER_LEASE_TTL": str(LEASE_TTL),
            "PM_CLUSTER_SHARDS": str(SHARDS),
            "PM_TOPICS_RESPONSE": "/remote/{device}/response/{gateway}",
            "PM_STORE_URL": url,
            "PM_STORE_COMMIT_INTERVAL": "0.02",
            "PM_BROKER_EMBEDDED": "false",
            "PM_MQTT_HOST": broker.host,
            "PM_MQTT_PORT": str(broker.port),
            "PM_MQTT_CLIENT_ID": f"pm-{name}-{uuid.uuid4().hex[:8]}",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pm.cli", "serve", "--http", f"127.0.0.1:{self.http_port}"]
                + ["--log-level", "info"],
                env=self.environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def cluster(
    tmp_path: Path, mosquitto: MosquittoBroker, migrated_postgres_url: str
) -> Iterator[list[ClusterGateway]]:
    gateways = [
        ClusterGateway(tmp_path, f"gw-{n}", mosquitto, migrated_postgres_url) for n in range(3)
    ]
    yield gateways
    for gateway in gateways:
        gateway.kill()


async def start_cluster(gateways: list[ClusterGateway], url: str) -> None:
    """Start ``gateways``; returns once each answers and holds shards (each its share)."""
    for gateway in gateways:
        gateway.start()
    for gateway in gateways:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            await wait_ready(client, gateway)  # type: ignore[arg-type]
    names = {gateway.name for gateway in gateways}
    await poll_until(lambda: set(shard_owners(url)) == names)


def shard_owners(url: str) -> dict[str | None, int]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT owner, count(*) FROM shard_leases"
            " WHERE expires_at > extract(epoch FROM clock_timestamp()) GROUP BY owner"
        ).fetchall()
    return dict(rows)


def task_rows(url: str, job_id: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return connection.execute(
            "SELECT device, entry, status, result FROM tasks WHERE job_id = %s ORDER BY id",
            (job_id,),
        ).fetchall()


async def test_three_gateways_share_a_job_and_finish_a_killed_ones_part(
    cluster: list[ClusterGateway],
    mosquitto: MosquittoBroker,
    migrated_postgres_url: str,
    nursery: trio.Nursery,
) -> None:
    url = migrated_postgres_url
    devices = [f"c{i:03d}" for i in range(300)]
    with trio.fail_after(GUARD):
        await start_cluster(cluster, url)
        async with httpx.AsyncClient(timeout=10) as client:
            simulator = await nursery.start(
                run_simulator,
                SimulatorSettings(
                    host=mosquitto.host,
                    port=mosquitto.port,
                    devices=devices,
                    latency=0.05,
                    connections=10,
                    track_request_ids=True,
                ),
            )
            batch = [entry(devices, f"/step/{step}") for step in range(2)]
            response = await client.post(f"{cluster[0].url}/jobs", json={"batch": batch})
            assert response.status_code == 200, response.text
            created = response.json()
            assert created["totalCount"] == 600

            await poll_until(lambda: simulator.stats.answered >= 200)
            victim = cluster[2]
            victim.kill()
            killed_at = trio.current_time()
            assert simulator.stats.answered < 600, "the job finished before the kill: no test"

            async with httpx.AsyncClient(base_url=cluster[1].url, timeout=10) as survivor:
                job = await wait_final(survivor, created["id"])
                finished_in = trio.current_time() - killed_at
                health = (await survivor.get("/healthz")).json()

    assert job["status"] == "resolved", job
    assert (job["finishCount"], job["errorCount"], job["totalCount"]) == (600, 0, 600)
    assert job["outcome"] == "succeeded"
    rows = task_rows(url, created["id"])
    # Every task resolved, each by the answer to its own request.
    assert sorted((device, position) for device, position, _, _ in rows) == sorted(
        (device, position) for device in devices for position in range(2)
    )
    for _, position, status, result in rows:
        assert status == "resolved"
        assert json.loads(result) == {"resource": f"/step/{position}", "echo": {}}
    # Never two commands at once on a device, whichever gateway sent them.
    assert simulator.stats.overlaps == 0
    # /healthz counts its shards' fleets; nothing a device sent was malformed or foreign.
    assert health["deviceActors"] > 0, health
    assert not {"malformed", "foreign_topic"} & set(health["droppedMessages"]), health
    owners = shard_owners(url)
    assert set(owners) == {"gw-0", "gw-1"} and sum(owners.values()) == SHARDS
    print(f"\nkilled gw-2; the job ended {finished_in:.2f} s later (lease_ttl {LEASE_TTL} s)")


async def test_jobs_posted_to_different_gateways_keep_each_devices_order_across_a_join(
    cluster: list[ClusterGateway],
    mosquitto: MosquittoBroker,
    migrated_postgres_url: str,
    nursery: trio.Nursery,
) -> None:
    """Jobs posted one after the other, alternately to two gateways, reach every device in
    that order, whichever gateway holds its shard, and still do when a third gateway joins
    mid-way and takes shards over (the others stop serving them a lease round before they
    release them: never two requests at once on a device). What would act per gateway is
    refused."""
    url = migrated_postgres_url
    devices = [f"f{i:02d}" for i in range(60)]
    steps = 8
    with trio.fail_after(GUARD):
        await start_cluster(cluster[:2], url)
        async with httpx.AsyncClient(timeout=10) as client:
            simulator = await nursery.start(
                run_simulator,
                SimulatorSettings(
                    host=mosquitto.host,
                    port=mosquitto.port,
                    devices=devices,
                    latency=0.6,  # 8 steps: ~5 s a device, so the join lands mid-way
                    connections=6,
                    record_requests=True,
                ),
            )
            created = []
            for step in range(steps):
                target = cluster[step % 2]
                body = {"batch": [entry(devices, f"/job/{step}")]}
                response = await client.post(f"{target.url}/jobs", json=body)
                assert response.status_code == 200, response.text
                created.append(response.json()["id"])
            cluster[2].start()  # joins while the jobs run
            # limits.max_jobs_running counts the cluster's jobs: any gateway sees all eight.
            for _ in range(200):
                health = (await client.get(f"{cluster[1].url}/healthz")).json()
                if health["jobsRunning"] == steps:
                    break
                await trio.sleep(0.02)
            assert health["jobsRunning"] == steps, health

            refused = await client.post(
                f"{cluster[1].url}/jobs",
                json={"batch": [entry(devices, "/paced")], "rollout": {"maxInFlight": 5}},
            )
            assert refused.status_code == 400, refused.text
            assert "`$.rollout` is not supported with cluster.enabled" in refused.text
            paused = await client.post(f"{cluster[0].url}/jobs/{created[-1]}/pause", json={})
            assert paused.status_code == 409, paused.text
            assert "not supported with cluster.enabled" in paused.text

            names = {gateway.name for gateway in cluster}
            await poll_until(lambda: set(shard_owners(url)) == names)  # shards moved to it
            last = await client.get(f"{cluster[0].url}/jobs/{created[-1]}")
            assert last.json()["finishAt"] is None, "the jobs ended before the join: no test"

            async with httpx.AsyncClient(base_url=cluster[2].url, timeout=10) as reader:
                jobs = [await wait_final(reader, job_id) for job_id in created]

    assert [job["status"] for job in jobs] == ["resolved"] * steps
    for device in devices:
        # A request re-sent by the new owner of a shard (same id) counts once.
        distinct = dict.fromkeys((r["id"], r["resource"]) for r in simulator.requests[device])
        resources = [resource for _, resource in distinct]
        assert resources == [f"/job/{step}" for step in range(steps)], device
    assert simulator.stats.overlaps == 0
