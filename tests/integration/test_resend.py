"""In-flight work across disconnects and restarts, end to end: REST in, the real broker
(embedded amqtt, or an external mosquitto the devices stay connected to), devices on their
own MQTT connections.

The rule (docs/protocol.md): a request in flight goes out once more, with the same id, when
its device comes back or, after a restart, when it is first seen; never on a timer. "Never
again" is shown by waiting for the task's own timeout (an event), never by a sleep.
Real sockets, so real time: short task timeouts with wide margins, and a hang guard.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from pm.config import Config
from pm.gateway import Gateway, run_gateway
from pm.mqtt import open_mqtt_client
from pm.presence import Presence
from pm.simulator import Simulator, SimulatorSettings, run_simulator
from tests.integration.brokers import MosquittoBroker, free_port
from tests.integration.gateways import GatewayFactory, SimulatorFactory, gateway_config
from tests.job_api import assert_consistent, entry, post_job, wait_final
from tests.waiting import poll_until


async def task_of(client: httpx.AsyncClient, job_id: int, index: int = 0) -> dict[str, Any]:
    job = (await client.get(f"/jobs/{job_id}", params={"collection": "true"})).json()
    task: dict[str, Any] = job["collection"][index]
    return task


def presence_is(gateway: Gateway, device: str, presence: Presence) -> bool:
    assert gateway.engine is not None
    return gateway.engine.presence.presence(device) is presence


async def test_a_device_that_reconnects_gets_its_request_once_more_and_one_answer_settles(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(40):
        gateway = await start_gateway(tasks={"default_timeout": 30})
        simulator = await start_simulator(gateway, ["dev"])
        await poll_until(lambda: presence_is(gateway, "dev", Presence.ONLINE))
        client = http(gateway)
        simulator.paused = True  # it receives the first copy and does not answer it
        job = await post_job(client, entry("dev", "/work"))
        await poll_until(lambda: len(simulator.received_by("dev")) == 1)

        await simulator.disconnect("dev")
        await poll_until(lambda: presence_is(gateway, "dev", Presence.OFFLINE))
        away = await task_of(client, job["id"])
        assert (away["__task"]["status"], away["__task"]["sends"]) == ("sent", 1)

        simulator.paused = False
        await simulator.reconnect("dev")
        finished = await wait_final(client, job["id"])
        task = finished["collection"][0]
        assert (task["__task"]["status"], task["__task"]["sends"]) == ("resolved", 2)
        assert (finished["finishCount"], finished["errorCount"]) == (1, 0)
        assert_consistent(finished)
        # Exactly one re-send, with the same id.
        assert [r["id"] for r in simulator.received_by("dev")] == [task["id"], task["id"]]


async def test_a_device_that_answers_both_copies_settles_its_task_once(
    start_gateway: GatewayFactory, http: Any
) -> None:
    """A device that answers every copy it gets (no cache of answers): the first answer
    settles the task, the second is dropped and counted as a duplicate."""
    with trio.fail_after(40):
        gateway = await start_gateway(tasks={"default_timeout": 30})
        client = http(gateway)
        received: list[dict[str, Any]] = []

        def on_message(topic: str, payload: bytes) -> None:
            received.append(json.loads(payload))

        connect = partial(
            open_mqtt_client,
            gateway.mqtt_host,
            gateway.mqtt_port,
            client_id="dup-device",
            on_message=on_message,
        )
        async with connect() as device:
            await device.subscribe("/remote/dup", qos=1)
            await poll_until(lambda: presence_is(gateway, "dup", Presence.ONLINE))
            job = await post_job(client, entry("dup", "/work"))
            await poll_until(lambda: len(received) == 1)
        # Its connection closed (the embedded broker says offline), then a new one.
        await poll_until(lambda: presence_is(gateway, "dup", Presence.OFFLINE))
        async with connect() as device:
            await device.subscribe("/remote/dup", qos=1)
            await poll_until(lambda: len(received) == 2)
            first, second = received
            assert first == second
            for copy in (1, 2):
                answer = {"id": first["id"], "code": 200, "data": {"copy": copy}}
                device.publish(first["tunnel"], json.dumps(answer).encode())
            finished = await wait_final(client, job["id"])
            task = finished["collection"][0]["__task"]
            assert (task["status"], task["result"], task["sends"]) == (
                "resolved",
                {"copy": 1},
                2,
            )
            assert finished["finishCount"] == 1 and finished["doneCount"] == 1

            assert gateway.engine is not None
            dropped = gateway.engine.fleet.dropped
            await poll_until(lambda: dropped["duplicate_answer"] == 1)
            health = (await client.get("/healthz")).json()
            assert health["droppedMessages"]["duplicate_answer"] == 1


# -- gateway restarts ------------------------------------------------------------------------


@asynccontextmanager
async def gateway_running(config: Config) -> AsyncIterator[Gateway]:
    """A gateway until the block exits; then a graceful stop, awaited to its end."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        gateway = await nursery.start(partial(run_gateway, config, shutdown_trigger=stop.wait))
        try:
            yield gateway
        finally:
            stop.set()


TASK_TIMEOUT = 6.0  # counted from the first send, across the restart; wide under load
EXPIRES_IN = 4.0


async def restart_with_pending_and_sent(
    config: Config, port: int, *, device_reconnects: bool
) -> None:
    """Job: a task to ``dev`` (sent, never answered: its device is paused) and one to
    ``gone`` (offline: pending, with an expiry). The gateway restarts on the same database;
    ``dev`` stays up, connected throughout unless ``device_reconnects`` (its broker restarts
    with the gateway)."""
    async with trio.open_nursery() as nursery:
        async with gateway_running(config) as gateway:
            # dev outlives this gateway: it runs in the test's nursery.
            simulator: Simulator = await nursery.start(
                run_simulator,
                SimulatorSettings(
                    host="127.0.0.1", port=port, devices=["dev"], record_requests=True
                ),
            )
            simulator.paused = True
            assert gateway.engine is not None
            gateway.engine.presence.update("gone", Presence.OFFLINE, 0.0)
            await poll_until(lambda: presence_is(gateway, "dev", Presence.ONLINE))
            async with httpx.AsyncClient(base_url=gateway.http_url, timeout=10) as client:
                job = await post_job(
                    client,
                    entry("dev", "/sent", timeout=TASK_TIMEOUT),
                    entry("gone", "/pending", expiresIn=EXPIRES_IN),
                )
                await poll_until(lambda: len(simulator.received_by("dev")) == 1)
                before = await client.get(f"/jobs/{job['id']}", params={"collection": "true"})
                sent, pending = before.json()["collection"]
                assert (sent["__task"]["status"], sent["__task"]["sends"]) == ("sent", 1)
                assert pending["__task"]["waiting"] == "device-offline"
        connections_before = simulator.connected
        async with gateway_running(config) as gateway:
            async with httpx.AsyncClient(base_url=gateway.http_url, timeout=10) as client:
                # Pending stays pending, waiting for the same reason, with its expiry from
                # the job's creation.
                resumed = await task_of(client, job["id"], 1)
                assert resumed["__task"]["status"] == "pending"
                assert resumed["__task"]["waiting"] == "device-offline"
                assert resumed["__task"]["expiresAt"] == pending["__task"]["expiresAt"]
                # The sent one goes out once more when dev is seen...
                await poll_until(lambda: len(simulator.received_by("dev")) == 2)
                # ...and never again while dev stays connected: its timeout, counted from
                # the first send, ends it.
                finished = await wait_final(client, job["id"])
                sent_task, pending_task = finished["collection"]
                assert (sent_task["__task"]["status"], sent_task["__task"]["sends"]) == (
                    "timeout",
                    2,
                )
                assert pending_task["__task"]["status"] == "expired"
                received = simulator.received_by("dev")
                assert [r["id"] for r in received] == [sent_task["id"], sent_task["id"]]
                if not device_reconnects:
                    assert simulator.connected == connections_before == 1
        nursery.cancel_scope.cancel()


async def test_a_restart_resends_a_sent_task_once_when_its_device_reconnects(
    tmp_path: Path,
) -> None:
    # The embedded broker dies with the gateway: the device reconnects to the new one, which
    # announces it online.
    with trio.fail_after(60):
        port = free_port()
        config = gateway_config(broker={"port": port}, store={"path": str(tmp_path / "pm.db")})
        await restart_with_pending_and_sent(config, port, device_reconnects=True)


async def test_a_restart_resends_a_sent_task_once_to_a_device_that_stayed_connected(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    # An external broker outlives the gateway: the device's retained birth, replayed when
    # the new gateway subscribes, is the sighting.
    with trio.fail_after(60):
        config = gateway_config(
            broker={"embedded": False},
            mqtt={"host": mosquitto.host, "port": mosquitto.port},
            store={"path": str(tmp_path / "pm.db")},
        )
        await restart_with_pending_and_sent(config, mosquitto.port, device_reconnects=False)
