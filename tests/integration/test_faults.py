"""Faults through the whole gateway: an external broker restarted mid-job (briefly, and for
longer than the task timeout), devices that drop off and come back, a device actor with a
bug. Real gateway, real brokers, simulated devices.

The embedded broker killed mid-job is ``test_dispatch.test_embedded_broker_restart_mid_job``;
the device actor failure policy on its own is ``tests/test_engine.py``.

Real sockets, so real time: short task timeouts with wide margins, a hang guard per test.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from pm.devices import Dispatch, Fleet
from pm.presence import Presence
from tests.integration.brokers import MosquittoBroker
from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.job_api import assert_consistent, entry, post_job, wait_final
from tests.waiting import poll_until


def log_records(caplog: pytest.LogCaptureFixture, **fields: Any) -> list[logging.LogRecord]:
    """The captured records whose ``extra=`` fields include ``fields``."""
    return [
        record
        for record in caplog.records
        if all(getattr(record, name, None) == value for name, value in fields.items())
    ]


async def test_external_mosquitto_restart_mid_job(
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: Any,
    mosquitto: MosquittoBroker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pm")
    with trio.fail_after(30):
        gateway = await start_gateway(
            broker={"embedded": False},
            mqtt={"host": mosquitto.host, "port": mosquitto.port},
            tasks={"default_timeout": 8},
        )
        devices = [f"x{i}" for i in range(20)]
        simulator = await start_simulator(gateway, devices, latency=0.1)
        # Still working on its request when the broker is back (the outage and both
        # reconnects take about a second): the request re-sent then reaches it a second time.
        working = await start_simulator(gateway, ["busy"], latency=4.0)
        client = http(gateway)
        created = await post_job(client, *[entry(devices, f"/n/{i}") for i in range(5)])
        held = await post_job(client, entry("busy", "/long"))
        await poll_until(lambda: simulator.stats.answered >= 30 and working.stats.received >= 1)
        # Gateway and devices all lose the broker, which keeps nothing (persistence false):
        # requests and answers in transit, retained messages and subscriptions are gone.
        await trio.to_thread.run_sync(mosquitto.stop)
        await trio.sleep(0.5)
        await trio.to_thread.run_sync(mosquitto.start)
        job = await wait_final(client, created["id"])
        assert_consistent(job)
        # What held, run after run: nothing timed out. Requests in flight were re-sent with
        # the same id once the gateway reconnected, and once more when each device announced
        # itself again (its birth after its own reconnect); a device that had answered before
        # the broker died replayed its answer.
        assert job["status"] == "resolved" and job["finishCount"] == 100, job["errorCount"]
        assert gateway.engine is not None and gateway.engine.fleet.republished >= 1
        # Devices saw the same id again, never two requests at once. (The fast devices see
        # one again only when the outage caught their answer in transit, 12 to 20 of them
        # in most runs but none in some under load; the busy one always does.)
        assert working.stats.duplicates >= 1 and working.stats.overlaps == 0
        assert simulator.stats.overlaps == 0
        held_job = await wait_final(client, held["id"])
        assert held_job["status"] == "resolved" and held_job["finishCount"] == 1
        tasks = job["collection"]
        for device in devices:
            expected = [t["id"] for t in tasks if t["__destination"] == device]
            arrived = [request["id"] for request in simulator.received_by(device)]
            # Re-sends repeat an id (at least once); first arrivals keep the queue's order.
            assert list(dict.fromkeys(arrived)) == expected, (device, arrived)
        health = (await client.get("/healthz")).json()
        assert health["brokerConnected"] and health["brokerReconnects"] >= 1
        reconnect_lines = log_records(caplog, generation=2)
        assert reconnect_lines and "re-sent" in reconnect_lines[0].getMessage()
        assert log_records(caplog, job_id=created["id"], status="resolved", finish_count=100)


async def test_external_mosquitto_down_longer_than_task_timeouts(
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: Any,
    mosquitto: MosquittoBroker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pm")
    with trio.fail_after(30):
        gateway = await start_gateway(
            broker={"embedded": False},
            mqtt={"host": mosquitto.host, "port": mosquitto.port},
            tasks={"default_timeout": 1.0},
        )
        devices = [f"y{i}" for i in range(10)]
        simulator = await start_simulator(gateway, devices, latency=0.1, status=False)
        client = http(gateway)
        created = await post_job(client, *[entry(devices, f"/n/{i}") for i in range(5)])
        await poll_until(lambda: simulator.stats.answered >= 15)
        resolved_before = (await client.get(f"/jobs/{created['id']}")).json()["finishCount"]
        await trio.to_thread.run_sync(mosquitto.stop)
        # Down until each device's request in flight at the stop has timed out (1 s); in most
        # runs the next one too: published into the outage, re-sent on reconnect, expired
        # before the device was back. The devices are v1 (no birth, no last will): their
        # presence stays unknown, so the gateway sends into the outage as it always did (a
        # v1.1 device's will, which mosquitto delivers as it stops, marks it offline and holds
        # its next task back instead, so whether anything times out would be a race).
        assert gateway.engine is not None
        running = gateway.engine.get(created["id"])
        assert running is not None

        def every_device_has_a_timeout() -> bool:
            timed_out = {task.device for task in running.record.tasks if task.status == "timeout"}
            return timed_out == set(devices)

        await poll_until(every_device_has_a_timeout)
        await trio.to_thread.run_sync(mosquitto.start)
        job = await wait_final(client, created["id"])
        assert_consistent(job)
        statuses = [t["__task"]["status"] for t in job["collection"]]
        # Every task resolved or timed out, never anything else; the job (no job timeout)
        # resolved with the timeouts counted as errors.
        assert set(statuses) == {"resolved", "timeout"}, statuses
        assert job["status"] == "resolved"
        # Dispatch went on after the outage: more tasks resolved than before it. (A device may
        # still be working on a request that timed out when the next one arrives: the gateway
        # moved on, as docs/protocol.md says, so the simulator's ``overlaps`` is not asserted.)
        assert job["finishCount"] > resolved_before
        timeouts = [t["id"] for t in job["collection"] if t["__task"]["status"] == "timeout"]
        for task_id in timeouts:
            assert log_records(caplog, task_id=task_id, status="timeout")


async def test_device_offline_mid_task_times_out_and_its_next_command_waits_for_it(
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pm")
    with trio.fail_after(20):
        gateway = await start_gateway()
        simulator = await start_simulator(gateway, ["flaky", "steady"], latency=0.3)
        client = http(gateway)
        created = await post_job(
            client,
            entry("flaky", "/first", timeout=1.0),
            entry("flaky", "/second", timeout=5),
            entry("steady", "/other"),
        )
        first, second, _ = created["collection"]
        await poll_until(lambda: len(simulator.received_by("flaky")) >= 1)
        # Offline while working on /first: its answer is never sent, and it stays away until
        # /first has timed out (a device back sooner gets the request again: test_resend.py).
        # /second, held back meanwhile (one command in flight, then the device offline),
        # reaches it once it is back.
        await simulator.disconnect("flaky")
        engine = gateway.engine
        assert engine is not None
        running = engine.get(created["id"])
        assert running is not None
        await poll_until(lambda: running.record.tasks[0].status == "timeout")
        await simulator.reconnect("flaky")
        job = await wait_final(client, created["id"])
        assert [t["__task"]["status"] for t in job["collection"]] == [
            "timeout",
            "resolved",
            "resolved",
        ]
        assert job["collection"][0]["__task"]["result"] is None
        assert_consistent(job)
        assert [r["id"] for r in simulator.received_by("flaky")] == [first, second]
        # The timeout is logged with its ids, as extra fields and in the text.
        [timeout_line] = log_records(caplog, job_id=created["id"], task_id=first, device="flaky")
        assert timeout_line.levelno == logging.INFO
        assert f"task {first} of job {created['id']} on device flaky: timeout" in (
            timeout_line.getMessage()
        )

        # Offline when its next task's turn comes: the task is held back (pending, waiting
        # "device-offline"; its timeout not running), and sent once the device is back.
        await simulator.disconnect("flaky")
        await poll_until(lambda: engine.presence.presence("flaky") is Presence.OFFLINE)
        # Its timeout is short but wide of the 0.3 s latency under load (0.5 s was not).
        held = await post_job(client, entry("flaky", "/held", timeout=2.0))
        held_job = engine.get(held["id"])
        assert held_job is not None
        await poll_until(lambda: held_job.record.tasks[0].waiting == "device-offline")
        assert held_job.record.tasks[0].status == "pending"
        await simulator.reconnect("flaky")
        job = await wait_final(client, held["id"])
        assert job["status"] == "resolved" and job["finishCount"] == 1
        back = await post_job(client, entry("flaky", "/back", timeout=5))
        job = await wait_final(client, back["id"])
        assert job["status"] == "resolved" and job["finishCount"] == 1
        assert [r["resource"] for r in simulator.received_by("flaky")] == [
            "/first",
            "/second",
            "/held",
            "/back",
        ]
        assert simulator.stats.overlaps == 0


async def test_device_actor_bug_errors_only_its_tasks(
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pm")
    run_task = Fleet._run_task

    async def buggy_run_task(self: Fleet, device: str, dispatch: Dispatch, *args: Any) -> None:
        if device == "cursed" and dispatch.task.resource == "/boom":
            raise RuntimeError("injected bug")
        await run_task(self, device, dispatch, *args)

    # A bug in the device actor itself (not a device's answer): the injected failure.
    monkeypatch.setattr(Fleet, "_run_task", buggy_run_task)
    with trio.fail_after(20):
        gateway = await start_gateway(tasks={"default_timeout": 5})
        simulator = await start_simulator(gateway, ["cursed", "fine"], latency=0.3)
        client = http(gateway)
        # "cursed" works on /first (0.3 s) while /boom, /after and the other job's /queued
        # wait in its mailbox: the failure takes /boom and everything queued behind it.
        first_job = await post_job(
            client,
            entry("cursed", "/first"),
            entry(["cursed", "fine"], "/boom"),
            entry(["cursed", "fine"], "/after"),
        )
        second_job = await post_job(client, entry(["fine", "cursed"], "/queued"))
        first = await wait_final(client, first_job["id"])
        second = await wait_final(client, second_job["id"])
        statuses = [(t["__destination"], t["__task"]["status"]) for t in first["collection"]]
        assert statuses == [
            ("cursed", "resolved"),
            ("cursed", "error"),
            ("fine", "resolved"),
            ("cursed", "error"),
            ("fine", "resolved"),
        ]
        reason = {"error": "device actor failed: RuntimeError('injected bug')"}
        assert first["collection"][1]["__task"]["result"] == reason
        assert first["status"] == "resolved" and first["errorCount"] == 2
        assert_consistent(first)
        assert [(t["__destination"], t["__task"]["status"]) for t in second["collection"]] == [
            ("fine", "resolved"),
            ("cursed", "error"),
        ]
        assert_consistent(second)
        # Nothing after the failure reached the device; the next task gets a fresh actor.
        assert [r["resource"] for r in simulator.received_by("cursed")] == ["/first"]
        again = await post_job(client, entry("cursed", "/again"))
        job = await wait_final(client, again["id"])
        assert job["status"] == "resolved" and job["finishCount"] == 1
        assert [r["resource"] for r in simulator.received_by("cursed")] == ["/first", "/again"]

        failed_tasks = [first["collection"][i]["id"] for i in (1, 3)]
        failed_tasks.append(second["collection"][1]["id"])
        summary = log_records(caplog, device="cursed", failed_tasks=3)
        assert summary and summary[0].levelno == logging.ERROR
        for task_id in failed_tasks:
            assert log_records(caplog, task_id=task_id, device="cursed", status="error")
