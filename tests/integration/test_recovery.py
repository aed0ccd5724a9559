"""Jobs survive the gateway: a real `pm serve` process SIGKILLed mid-job and started again on
the same database (a SQLite file, and a PostgreSQL database at ``store.url``), with simulated
devices that stay up throughout (they reconnect to the restarted embedded broker by
themselves)."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pm.cli import serve_command
from pm.simulator import Simulator, SimulatorSettings, run_simulator
from tests.integration.brokers import free_port
from tests.job_api import assert_consistent, entry, wait_final
from tests.stores import DatabaseUnderTest
from tests.waiting import poll_until


class GatewayProcess:
    """`python -m pm.cli serve` on fixed ports and a database, restartable.

    ``store``: the ``[store]`` variables naming the database; a file in ``directory`` if none.
    """

    def __init__(self, directory: Path, store: dict[str, str] | None = None) -> None:
        self.http_port = free_port()
        self.mqtt_port = free_port()
        self.store = store or {"PM_STORE_PATH": str(directory / "puppetmaster.db")}
        self.log = directory / "gateway.log"
        self.log_level = "warning"
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.process: subprocess.Popen[bytes] | None = None

    async def start_devices(
        self, nursery: trio.Nursery, devices: list[str], **settings: Any
    ) -> Simulator:
        """Simulated devices on this gateway's MQTT port; they reconnect across its restarts."""
        return await nursery.start(
            run_simulator,
            SimulatorSettings(host="127.0.0.1", port=self.mqtt_port, devices=devices, **settings),
        )

    def start(self) -> None:
        environment = {
            **os.environ,
            **self.store,
            "PM_STORE_COMMIT_INTERVAL": "0.02",
            "PM_MQTT_CLIENT_ID": f"pm-recovery-{uuid.uuid4().hex[:8]}",
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                serve_command(
                    ("127.0.0.1", self.http_port),
                    ("127.0.0.1", self.mqtt_port),
                    log_level=self.log_level,
                ),
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path)
    yield gateway
    gateway.stop()


@pytest.fixture
def gateway_on_each_engine(tmp_path: Path, database: DatabaseUnderTest) -> Iterator[GatewayProcess]:
    """As ``gateway_process``, once on a SQLite file and once on PostgreSQL (``store.url``)."""
    variable = "PM_STORE_URL" if database.engine == "postgresql" else "PM_STORE_PATH"
    gateway = GatewayProcess(tmp_path, {variable: database.location})
    yield gateway
    gateway.stop()


async def wait_ready(client: httpx.AsyncClient, gateway: GatewayProcess) -> None:
    """Until the gateway answers /healthz; fails at once, with its log, if it exited."""
    while True:
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if gateway.process is not None and gateway.process.poll() is not None:
            log = gateway.log.read_text(errors="replace")[-3000:]
            pytest.fail(f"pm serve exited with {gateway.process.returncode}:\n{log}")
        await trio.sleep(0.05)


async def get_job(client: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
    response = await client.get(f"/jobs/{job_id}", params={"collection": "true"})
    assert response.status_code == 200, response.text
    return response.json()


async def test_sigkill_mid_job_then_restart_completes_every_task(
    gateway_on_each_engine: GatewayProcess, nursery: trio.Nursery
) -> None:
    gateway_process = gateway_on_each_engine
    devices = [f"k{i:03d}" for i in range(100)]
    with trio.fail_after(90):
        gateway_process.start()
        async with httpx.AsyncClient(base_url=gateway_process.url, timeout=10) as client:
            await wait_ready(client, gateway_process)
            simulator = await gateway_process.start_devices(
                nursery, devices, latency=0.05, connections=10
            )
            batch = [entry(devices, f"/step/{step}") for step in range(10)]
            response = await client.post("/jobs", json={"batch": batch})
            assert response.status_code == 200
            created = response.json()
            assert created["totalCount"] == 1000
            await poll_until(lambda: simulator.stats.answered >= 300)
            gateway_process.signal(signal.SIGKILL)
            answered_before_kill = simulator.stats.answered
            assert answered_before_kill < 1000, "the job finished before the kill: no test"

            gateway_process.start()
            await wait_ready(client, gateway_process)
            job = await wait_final(client, created["id"])

            assert job["status"] == "resolved"
            assert_consistent(job)
            tasks = job["collection"]
            assert [task["id"] for task in tasks] == created["collection"]
            # Every task resolved exactly once, with its own device's answer to its own request.
            assert job["finishCount"] == 1000
            for task in tasks:
                assert task["__task"]["result"] == {"resource": task["resource"], "echo": {}}
            assert simulator.stats.overlaps == 0

            # A finished job survives a clean restart unchanged, listed and readable.
            gateway_process.signal(signal.SIGTERM)
            gateway_process.start()
            await wait_ready(client, gateway_process)
            assert await get_job(client, created["id"]) == job
            listed = await client.get("/jobs", params={"status": "resolved"})
            assert [listed_job["id"] for listed_job in listed.json()] == [created["id"]]
            assert listed.headers["X-Total-Count"] == "1"
            # Ids are never reused: a new job after two restarts gets fresh ids.
            again = await client.post("/jobs", json={"batch": [entry(devices[0], "/again")]})
            assert again.json()["id"] > created["id"]
            assert min(again.json()["collection"]) > max(created["collection"])


async def test_sigterm_sends_nothing_new_and_a_restart_resends_nothing_answered(
    gateway_process: GatewayProcess, nursery: trio.Nursery
) -> None:
    devices = [f"t{i:02d}" for i in range(20)]
    gateway_process.log_level = "info"  # the test watches for its "gateway stopping" line
    with trio.fail_after(90):
        gateway_process.start()
        # The client keeps its connection open (keep-alive) across the stop, as a dashboard
        # or a polling client would: the HTTP server then takes its full grace to stop.
        async with httpx.AsyncClient(base_url=gateway_process.url, timeout=10) as client:
            await wait_ready(client, gateway_process)
            simulator = await gateway_process.start_devices(
                nursery, devices, latency=0.1, record_requests=True
            )

            def received() -> set[int]:
                return {r["id"] for d in devices for r in simulator.received_by(d)}

            batch = [entry(devices, f"/step/{step}") for step in range(40)]
            response = await client.post("/jobs", json={"batch": batch})
            assert response.status_code == 200
            created = response.json()
            await poll_until(lambda: simulator.stats.answered >= 100)

            process = gateway_process.process
            assert process is not None
            process.send_signal(signal.SIGTERM)
            # The gateway logs this line and stops dispatching with no checkpoint in between.
            await poll_until(lambda: b"gateway stopping" in gateway_process.log.read_bytes())
            at_stop = {device: len(simulator.received_by(device)) for device in devices}
            await poll_until(lambda: process.poll() is not None)
            assert process.returncode == 0
            # At most the one request per device that was on its way when the stop began;
            # 20 devices answering every 0.1 s would get ~20 each during the 2 s HTTP grace.
            late = {d: len(simulator.received_by(d)) - at_stop[d] for d in devices}
            assert max(late.values()) <= 1, late
            received_before_restart = received()
            assert len(received_before_restart) < 800, "the job finished before the stop: no test"

            gateway_process.start()
            await wait_ready(client, gateway_process)
            job = await wait_final(client, created["id"])
            assert job["status"] == "resolved" and job["finishCount"] == 800
            # Every request in flight at the stop was answered within the grace and stored:
            # the restart sends only what had never been sent. (Requests sent after the
            # restart may be re-sent while devices reconnect: not counted here.)
            sent_before = [
                r["id"]
                for d in devices
                for r in simulator.received_by(d)
                if r["id"] in received_before_restart
            ]
            assert len(sent_before) == len(received_before_restart), "a request was sent again"
