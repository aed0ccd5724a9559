"""Per-gateway answer topics (docs/scale-out.md): two gateways on one external mosquitto,
each sending ``tunnel = /remote/{device}/response/{its id}`` and subscribed to its own answers
only; the same simulated devices answer both. Real broker, real gateways, real devices."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from pm.gateway import Gateway
from pm.presence import Presence
from pm.protocol import PROBE_DEVICE_ID
from tests.integration.brokers import MosquittoBroker
from tests.integration.gateways import GatewayFactory, SimulatorFactory, probe_came_back
from tests.job_api import entry, post_job, wait_final
from tests.waiting import poll_until

PER_GATEWAY = {"response": "/remote/{device}/response/{gateway}"}
_GUARD = 20.0


async def start_gateway_named(
    start_gateway: GatewayFactory, mosquitto: MosquittoBroker, name: str, **sections: Any
) -> Gateway:
    """A gateway on the external mosquitto whose answer topic carries its id, ``name``."""
    return await start_gateway(
        broker={"embedded": False},
        mqtt={"host": mosquitto.host, "port": mosquitto.port, **sections.pop("mqtt", {})},
        topics=PER_GATEWAY,
        cluster={"gateway_id": name},
        tasks={"default_timeout": 5},
        **sections,
    )


async def test_each_gateway_hears_only_the_answers_to_its_own_requests(
    mosquitto: MosquittoBroker,
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: Any,
) -> None:
    with trio.fail_after(_GUARD):
        first = await start_gateway_named(start_gateway, mosquitto, "gw-1")
        second = await start_gateway_named(start_gateway, mosquitto, "gw-2")
        devices = ["dev-a", "dev-b"]
        simulator = await start_simulator(first, devices)
        clients: list[httpx.AsyncClient] = [http(first), http(second)]
        # One gateway after the other, to the same devices: a device's answers to the first
        # leave (on its one connection) before its answers to the second, so had the second
        # gateway received the first one's answers it would have counted them by the time
        # its own job is resolved.
        for client in clients:
            job = await wait_final(client, (await post_job(client, entry(devices)))["id"])
            assert job["status"] == "resolved" and job["finishCount"] == 2
        for device in devices:
            tunnels = [request["tunnel"] for request in simulator.received_by(device)]
            assert tunnels == [f"/remote/{device}/response/gw-1", f"/remote/{device}/response/gw-2"]
        for gateway in (first, second):
            assert gateway.engine is not None
            # Every answer it got answered one of its requests: none of the other gateway's
            # (without the {gateway} level both subscribe to /remote/+/response and each counts
            # the other's answers as unexpected).
            assert dict(gateway.engine.fleet.dropped) == {}
            assert gateway.engine.fleet.answered == 2
            # Its answer-path probe runs on its own answer topic, and comes back.
            # Presence is not per gateway: every device's status reaches both.
            presence = gateway.engine.presence
            await poll_until(
                lambda: all(presence.presence(d) is Presence.ONLINE for d in devices)  # noqa: B023
            )
            name = gateway.config.cluster.gateway_id
            probe = await probe_came_back(gateway)
            assert probe.topic == f"/remote/{PROBE_DEVICE_ID}/response/{name}"
            assert probe.ok and probe.probes_lost == 0


async def test_a_generated_gateway_id_names_the_answer_topic(
    mosquitto: MosquittoBroker,
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: Any,
) -> None:
    with trio.fail_after(_GUARD):
        gateway = await start_gateway(
            broker={"embedded": False},
            mqtt={"host": mosquitto.host, "port": mosquitto.port},
            topics=PER_GATEWAY,
            tasks={"default_timeout": 5},
        )
        # Made up at start (cluster.gateway_id empty), then used everywhere for this run.
        name = gateway.config.cluster.gateway_id
        assert name
        simulator = await start_simulator(gateway, ["dev-a"])
        client = http(gateway)
        job = await wait_final(client, (await post_job(client, entry("dev-a")))["id"])
        assert job["status"] == "resolved" and job["finishCount"] == 1
        assert simulator.received_by("dev-a")[0]["tunnel"] == f"/remote/dev-a/response/{name}"
