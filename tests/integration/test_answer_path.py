"""The gateway hears its own answer path: a probe through its answer subscription finds a lost
subscription and repairs it, through the real embedded broker and mosquitto.

Real sockets, so real time: short probe intervals with wide margins, a hang guard per test.
"""

from __future__ import annotations

from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from pm.gateway import Gateway
from pm.mqtt import open_mqtt_client
from tests.integration.brokers import MosquittoBroker
from tests.integration.gateways import GatewayFactory, SimulatorFactory, probe_came_back
from tests.job_api import entry, post_job, wait_final
from tests.waiting import poll_until

# Fast probing, so that a lost subscription is found within about a second; a generous task
# timeout, so that a job sent into the deaf gateway has time to be repaired and answered.
_FAST_PROBE = {"answer_probe_interval": 0.2, "answer_probe_timeout": 1.0}
_TASK_TIMEOUT = 15.0
# Where a test shows that no probe is lost, a timeout no load spike reaches.
_PATIENT_PROBE = {"answer_probe_interval": 0.2, "answer_probe_timeout": 10.0}


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
        # Anyone (broker.auth is off by default) tries for a second to connect with the
        # gateway's client id, clean session: plain amqtt 0.12.1 would let it in, drop the
        # gateway's subscription and never close the gateway's connection.
        intruder_connected = False
        with trio.move_on_after(1.0):
            async with open_mqtt_client(
                gateway.mqtt_host,
                gateway.mqtt_port,
                client_id="puppetmaster",
                on_message=lambda topic, payload: None,
            ):
                intruder_connected = True
                await trio.sleep_forever()
        created = await post_job(client, entry("d1", "/after/intruder"))
        job = await wait_final(client, created["id"])
        # Before the fix the task ended `timeout`: the device answered, nobody heard it.
        assert job["finishCount"] == 1, job["collection"][0]["__task"]
        # The job's answer came through the repaired path; a probe confirms it (a load spike
        # may have cost one more probe since).
        probe = gateway.answer_probe
        assert probe is not None
        await poll_until(lambda: probe.ok)
        health = (await client.get("/healthz")).json()
        answer_path = health["answerPath"]
        assert answer_path["ok"] and health["status"] == "ok", health
        # The embedded broker refuses the gateway's reserved id, so the intruder never got in
        # and the probe had nothing to repair; a deafened gateway's repair is shown by
        # test_a_dropped_subscription_is_repaired_* below.
        assert not intruder_connected
        # Probe echoes are the gateway's own: no device answer handling saw them.
        assert health["droppedMessages"] == {}, health
        metrics = {
            (sample.name, tuple(sample.labels.items())): sample.value
            for family in text_string_to_metric_families((await client.get("/metrics")).text)
            for sample in family.samples
        }
        assert metrics[("pm_answer_path_ok", ())] == 1
        assert metrics[("pm_answer_probes_lost_total", ())] == answer_path["probesLost"]
        assert metrics[("pm_answer_path_resubscribes_total", ())] == answer_path["resubscribes"]
        assert metrics[("pm_answer_path_reconnects_total", ())] == answer_path["reconnects"]
        assert metrics[("pm_answer_probe_round_trip_seconds", ())] > 0


async def test_the_probe_round_trips_through_an_external_mosquitto(
    start_gateway: GatewayFactory, http: Any, mosquitto: MosquittoBroker
) -> None:
    with trio.fail_after(20):
        gateway = await start_gateway(
            broker={"embedded": False},
            mqtt={"host": mosquitto.host, "port": mosquitto.port, **_PATIENT_PROBE},
        )
        probe = await probe_came_back(gateway)
        await poll_until(lambda: probe.probes_sent >= 3)
        assert probe.ok and probe.probes_lost == 0 and probe.reconnects == 0
        health = (await http(gateway).get("/healthz")).json()
        assert health["answerPath"]["ok"] and health["answerPath"]["lastRoundTripMs"] > 0
        assert health["droppedMessages"] == {}


async def _deafen_and_expect_repair(
    gateway: Gateway, start_simulator: SimulatorFactory, client: httpx.AsyncClient
) -> None:
    """The broker forgets the gateway's subscription while the connection stays up; a job's
    answer sent meanwhile is lost, and the repair (a re-subscribe) must ask for it again."""
    await start_simulator(gateway, ["d2"], latency=0.3)
    probe = await probe_came_back(gateway)
    # An UNSUBSCRIBE on the gateway's own connection, behind its client's back: nothing in the
    # gateway knows, as when amqtt deletes the subscription. Sent before the job's request on
    # the same connection, and the device answers 0.3 s after receiving it.
    assert gateway.mqtt is not None and gateway.mqtt._connection is not None
    gateway.mqtt._connection.paho.unsubscribe("/remote/+/response")
    created = await post_job(client, entry("d2", "/while/deaf"))
    job = await wait_final(client, created["id"])
    assert job["finishCount"] == 1, job["collection"][0]["__task"]
    assert probe.probes_lost >= 1 and probe.resubscribes >= 1 and probe.reconnects == 0
    # The answer sent while deaf was lost: the device answered the re-sent request.
    assert gateway.engine is not None and gateway.engine.fleet.republished >= 1


async def test_a_dropped_subscription_is_repaired_on_the_embedded_broker(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(40):
        gateway = await start_gateway(mqtt=_FAST_PROBE, tasks={"default_timeout": _TASK_TIMEOUT})
        await _deafen_and_expect_repair(gateway, start_simulator, http(gateway))


async def test_a_dropped_subscription_is_repaired_on_mosquitto(
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: Any,
    mosquitto: MosquittoBroker,
) -> None:
    with trio.fail_after(40):
        gateway = await start_gateway(
            broker={"embedded": False},
            mqtt={"host": mosquitto.host, "port": mosquitto.port, **_FAST_PROBE},
            tasks={"default_timeout": _TASK_TIMEOUT},
        )
        await _deafen_and_expect_repair(gateway, start_simulator, http(gateway))
