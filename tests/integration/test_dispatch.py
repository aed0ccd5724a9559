"""The dispatch engine end to end: REST in, real embedded amqtt broker, simulated devices on
their own MQTT connections, answers back into the job.

Real sockets, so real time: short timeouts with wide margins, and a hang guard per test.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from pm.gateway import Gateway
from pm.mqtt import open_mqtt_client
from tests.integration.brokers import MosquittoBroker
from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.job_api import assert_consistent, entry, post_job, wait_final
from tests.waiting import poll_until


async def test_job_resolves_through_the_embedded_broker(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        devices = ["00-0C-29-1C-E8-01", "aa", "bb"]
        simulator = await start_simulator(gateway, ["00:0c:29:1c:e8:01", "aa", "bb"])
        client = http(gateway)
        created = await post_job(
            client, entry(devices, "/one", data={"n": 1}), entry("aa", "/two", method="post")
        )
        assert created["totalCount"] == 4 and len(created["collection"]) == 4
        job = await wait_final(client, created["id"])
        assert job["status"] == "resolved"
        assert_consistent(job)
        tasks = job["collection"]
        assert [(t["__destination"], t["resource"]) for t in tasks] == [
            ("00:0c:29:1c:e8:01", "/one"),
            ("aa", "/one"),
            ("bb", "/one"),
            ("aa", "/two"),
        ]
        assert tasks[0]["__task"]["result"] == {"resource": "/one", "echo": {"n": 1}}
        assert [r["id"] for r in simulator.received_by("aa")] == [tasks[1]["id"], tasks[3]["id"]]
        assert simulator.received_by("aa")[1]["method"] == "post"


async def test_one_command_in_flight_per_device_across_jobs(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(40):
        gateway = await start_gateway()
        devices = ["d1", "d2", "d3"]
        simulator = await start_simulator(gateway, devices, latency=0.02)
        client = http(gateway)
        first = await post_job(client, *[entry(devices, f"/a/{i}") for i in range(5)])
        second = await post_job(client, *[entry(devices, f"/b/{i}") for i in range(5)])
        for created in (first, second):
            job = await wait_final(client, created["id"])
            assert job["status"] == "resolved" and job["finishCount"] == 15
        assert simulator.stats.overlaps == 0
        for device in devices:
            received = [r["resource"] for r in simulator.received_by(device)]
            # FIFO: each job's tasks in entry order; all of one job's queued before the next's.
            assert received == [f"/a/{i}" for i in range(5)] + [f"/b/{i}" for i in range(5)]


async def test_task_and_job_timeouts(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        await start_simulator(gateway, ["quiet"], silent_rate=1.0)
        await start_simulator(gateway, ["talky"])
        client = http(gateway)
        task_timeout = await post_job(
            client, entry("quiet", "/x", timeout=0.3), entry("talky", "/y")
        )
        job = await wait_final(client, task_timeout["id"])
        assert job["status"] == "resolved"
        assert [t["__task"]["status"] for t in job["collection"]] == ["timeout", "resolved"]
        assert job["collection"][0]["__task"]["result"] is None
        assert_consistent(job)

        job_timeout = await post_job(client, entry(["quiet", "talky"], "/z"), timeout=0.5)
        job = await wait_final(client, job_timeout["id"])
        assert job["status"] == "timeout"
        assert [t["__task"]["status"] for t in job["collection"]] == ["timeout", "resolved"]
        assert_consistent(job)


async def test_cancel_keeps_queued_tasks_from_the_device(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        simulator = await start_simulator(gateway, ["slow"], latency=0.5)
        client = http(gateway)
        created = await post_job(client, *[entry("slow", f"/step/{i}") for i in range(4)])
        await poll_until(lambda: simulator.stats.received >= 1)
        response = await client.delete(f"/jobs/{created['id']}")
        assert response.status_code == 200
        final = response.json()
        assert final["status"] == "cancelled" and final["errorCount"] == 4
        assert (await client.get(f"/jobs/{created['id']}")).status_code == 404
        # The device takes its requests in order: a cancelled task that still went out would
        # reach it before this later job's task does.
        after = await post_job(client, entry("slow", "/after"))
        assert (await wait_final(client, after["id"]))["status"] == "resolved"
        assert [r["resource"] for r in simulator.received_by("slow")] == ["/step/0", "/after"]


async def test_progress_and_error_answers(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        await start_simulator(gateway, ["steps"], latency=0.6, progress_steps=3)
        await start_simulator(gateway, ["broken"], error_rate=1.0, error_code=503)
        client = http(gateway)
        created = await post_job(client, entry(["steps", "broken"], "/fw"))
        seen_progress: set[int] = set()
        while True:
            job = (await client.get(f"/jobs/{created['id']}", params={"collection": "true"})).json()
            steps = job["collection"][0]["__task"]
            if steps["status"] == "sent":
                seen_progress.add(steps["progress"])
            if job["finishAt"] is not None:
                break
            await trio.sleep(0.02)
        assert seen_progress & {25, 50, 75}, seen_progress
        steps_task, broken_task = job["collection"]
        assert steps_task["__task"]["status"] == "resolved"
        assert broken_task["__task"]["status"] == "error"
        assert broken_task["__task"]["result"] == {
            "code": 503,
            "resource": "/fw",
            "data": {"message": "simulated error"},
        }
        assert (job["finishCount"], job["errorCount"]) == (1, 1)


async def test_garbage_on_answer_topics_is_ignored_and_counted(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        await start_simulator(gateway, ["victim"], latency=0.3)
        client = http(gateway)
        created = await post_job(client, entry("victim", "/r"))
        garbage = [b"\xff\xfe not json", b"{}", b'{"id": 999999, "code": 200}', b'{"id": "x"}']
        async with open_mqtt_client(
            gateway.mqtt_host, gateway.mqtt_port, client_id="vandal", on_message=lambda t, p: None
        ) as vandal:
            for payload in garbage:
                assert vandal.publish("/remote/victim/response", payload)
            vandal.publish("/remote/nobody/response", json.dumps({"id": 1, "code": 200}).encode())
            job = await wait_final(client, created["id"])
        assert job["status"] == "resolved" and job["finishCount"] == 1
        health = (await client.get("/healthz")).json()
        dropped = health["droppedMessages"]
        assert dropped.get("malformed") == 3 and dropped.get("unexpected_id") == 2, dropped


async def test_embedded_broker_restart_mid_job(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(60):
        # Wide: a task's timeout runs while its device is away, and under load the devices'
        # reconnect backoff alone has taken over 3 s.
        gateway: Gateway = await start_gateway(tasks={"default_timeout": 15})
        devices = [f"r{i}" for i in range(20)]
        simulator = await start_simulator(gateway, devices, latency=0.1)
        client = http(gateway)
        created = await post_job(client, *[entry(devices, f"/n/{i}") for i in range(5)])
        await poll_until(lambda: simulator.stats.answered >= 30)
        assert gateway.broker is not None
        gateway.broker.kill()
        job = await wait_final(client, created["id"])
        assert gateway.broker.restarts == 1
        assert_consistent(job)
        # Requests lost with the broker were re-sent once each device was back (the restarted
        # broker announces it when it subscribes): nothing times out.
        assert job["status"] == "resolved" and job["finishCount"] == 100, job["errorCount"]
        assert gateway.engine is not None and gateway.engine.fleet.republished >= 1
        health = (await client.get("/healthz")).json()
        assert health["brokerConnected"] and health["brokerReconnects"] >= 1


async def test_external_mosquitto_through_the_same_client(
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: Any,
    mosquitto: MosquittoBroker,
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway(
            broker={"embedded": False}, mqtt={"host": mosquitto.host, "port": mosquitto.port}
        )
        assert gateway.broker is None
        assert (gateway.mqtt_host, gateway.mqtt_port) == (mosquitto.host, mosquitto.port)
        devices = [f"m{i}" for i in range(10)]
        simulator = await start_simulator(gateway, devices)
        client = http(gateway)
        created = await post_job(client, entry(devices, "/a"), entry(devices, "/b"))
        job = await wait_final(client, created["id"])
        assert job["status"] == "resolved" and job["finishCount"] == 20
        assert simulator.stats.overlaps == 0
        health = (await client.get("/healthz")).json()
        assert health["embeddedBrokerRestarts"] is None and health["brokerConnected"]
