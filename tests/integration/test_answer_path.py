"""The gateway hears its own answer path: a probe through its answer subscription finds a lost
subscription and repairs it (issue 14 item 4), through the real embedded broker and mosquitto.

Real sockets, so real time: short probe intervals with wide margins, a hang guard per test.
"""

from __future__ import annotations

from typing import Any

import trio

from pm.mqtt import open_mqtt_client

from .conftest import GatewayFactory, MosquittoBroker, SimulatorFactory, poll_until
from .test_dispatch import entry, post_job, wait_final

# Fast probing, so that a lost subscription is found within a second; generous task timeout,
# so that a job sent into the deaf gateway still has time to be repaired and answered.
_FAST_PROBE = {"answer_probe_interval": 0.2, "answer_probe_timeout": 0.5}
_TASK_TIMEOUT = 8.0


async def test_a_client_taking_the_gateway_client_id_once_does_not_deafen_it(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(40):
        gateway = await start_gateway(
            mqtt={"client_id": "puppetmaster", **_FAST_PROBE},
            tasks={"default_timeout": _TASK_TIMEOUT},
        )
        await start_simulator(gateway, ["d1"])
        client = http(gateway)
        # Anyone (broker.auth is off by default) connects once with the gateway's client id,
        # clean session, and leaves a second later: amqtt 0.12.1 drops the gateway's
        # subscription and never closes the gateway's connection.
        async with open_mqtt_client(
            gateway.mqtt_host,
            gateway.mqtt_port,
            client_id="puppetmaster",
            on_message=lambda topic, payload: None,
        ):
            await trio.sleep(1.0)
        created = await post_job(client, entry("d1", "/after/intruder"))
        job = await wait_final(client, created["id"])
        # Before the fix the task ended `timeout`: the device answered, nobody heard it.
        assert job["finishCount"] == 1, job["collection"][0]["__task"]
        health = (await client.get("/healthz")).json()
        answer_path = health["answerPath"]
        assert answer_path["probesLost"] >= 1 and answer_path["resubscribes"] >= 1, answer_path
        assert answer_path["ok"] and health["status"] == "ok", health
        # Probe echoes are the gateway's own: no device answer handling saw them.
        assert health["droppedMessages"] == {}, health
