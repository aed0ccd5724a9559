"""Job control through the whole gateway: the real embedded broker, simulated devices on real
MQTT connections, the real HTTP server (dry run, pause/resume/cancel/retry)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import trio

from pm.simulator import Simulator
from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.job_api import JSON_BODY, assert_json_error, entry
from tests.waiting import poll_until

GUARD = 30


async def wait_presence(client: httpx.AsyncClient, device: str, presence: str) -> None:
    """Poll until the gateway sees ``device`` with ``presence`` (bounded by the caller)."""
    while True:
        response = await client.get(f"/devices/{device}")
        if response.status_code == 200 and response.json()["presence"] == presence:
            return
        await trio.sleep(0.02)


async def test_dry_run_stores_and_sends_nothing_and_counts_destinations(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(GUARD):
        gateway = await start_gateway(limits={"max_tasks_per_job": 5})
        fleet = await start_simulator(gateway, ["up1", "up2", "down"])
        client = http(gateway)
        await fleet.disconnect("down")
        await wait_presence(client, "up1", "online")
        await wait_presence(client, "up2", "online")
        await wait_presence(client, "down", "offline")
        body = {"batch": [entry(["up1", "up2", "down", "nobody"]), entry(["up1"])]}

        response = await client.post("/jobs", params={"dryRun": "true"}, json=body)

        assert response.status_code == 200, response.text
        plan = response.json()
        assert plan["dryRun"] is True and "id" not in plan
        assert (plan["totalCount"], plan["deviceCount"]) == (5, 4)
        assert plan["destinations"] == {"online": 2, "offline": 1, "unknown": 1}
        # up1 has two tasks, one after the other, at the assumed latency each.
        assert plan["predictedDuration"] == 2 * plan["assumedLatency"]
        assert (await client.get("/jobs")).headers["X-Total-Count"] == "0"
        assert fleet.received_by("up1") == [] and fleet.received_by("up2") == []
        # It validates as a submit does: the same 4xx naming what is wrong.
        too_many = {"batch": [entry(["a", "b", "c", "d", "e", "f"])]}
        message = assert_json_error(
            await client.post("/jobs", params={"dryRun": "true"}, json=too_many), 413
        )
        assert "max_tasks_per_job" in message
        invalid = {"batch": [{"method": "GET", "resource": "r", "__destination": "a"}]}
        message = assert_json_error(
            await client.post("/jobs", params={"dryRun": "true"}, json=invalid), 400
        )
        assert "resource" in message
        assert_json_error(await client.post("/jobs", params={"dryRun": "maybe"}, json=body), 400)
        # dryRun=false is a real submit.
        real = await client.post("/jobs", params={"dryRun": "false"}, json=body)
        assert real.status_code == 200 and real.json()["totalCount"] == 5
        # Once a device has answered, its measured latency replaces the assumed one.
        assert gateway.engine is not None
        latencies = gateway.engine.fleet.latencies
        await poll_until(lambda: latencies.p50("up2") is not None)
        measured = await client.post(
            "/jobs", params={"dryRun": "true"}, json={"batch": [entry(["up2"])]}
        )
        assert measured.json()["latenciesKnown"] == 1
        assert measured.json()["predictedDuration"] < measured.json()["assumedLatency"]


async def control(
    client: httpx.AsyncClient, path: str, params: dict[str, str] | None = None
) -> httpx.Response:
    """POST a control request: no body, but declared JSON like every POST (a browser cannot
    send that cross-site without a preflight)."""
    return await client.post(path, params=params, headers=JSON_BODY)


async def job_state(client: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
    response = await client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def wait_job(
    client: httpx.AsyncClient, job_id: int, holds: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll the job until ``holds`` is true of it (bounded by the caller's guard)."""
    while not holds(job := await job_state(client, job_id)):  # noqa: ASYNC110 (polled API)
        await trio.sleep(0.02)
    return job


async def steps_on_one_device(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any, steps: int
) -> tuple[httpx.AsyncClient, Simulator, dict[str, Any]]:
    """A job of ``steps`` tasks to one device that takes 0.3 s a task (one at a time), once
    its first task is in flight; the client and the device's simulator with it."""
    gateway = await start_gateway()
    fleet = await start_simulator(gateway, ["a"], latency=0.3)
    client = http(gateway)
    body = {"batch": [entry("a", f"/step/{n}") for n in range(steps)]}
    job = (await client.post("/jobs", json=body)).json()
    await wait_job(client, job["id"], lambda j: j["sentCount"] == 1)
    return client, fleet, job


async def test_pause_holds_new_sends_resume_sends_the_rest_and_wrong_states_are_409(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(GUARD):
        client, fleet, job = await steps_on_one_device(start_gateway, start_simulator, http, 5)

        paused = await control(client, f"/jobs/{job['id']}/pause")

        assert paused.status_code == 200, paused.text
        assert (paused.json()["status"], paused.json()["holds"]) == ("paused", ["paused"])
        message = assert_json_error(await control(client, f"/jobs/{job['id']}/pause"), 409)
        assert "already" in message
        # The task in flight finishes; nothing else leaves while paused.
        held = await wait_job(client, job["id"], lambda j: j["sentCount"] == 0)
        assert held["status"] == "paused" and held["pendingCount"] == 5 - held["doneCount"]
        assert len(fleet.received_by("a")) == held["doneCount"]
        waiting = await client.get(f"/jobs/{job['id']}/tasks", params={"waiting": "job-paused"})
        assert waiting.headers["X-Total-Count"] == str(held["pendingCount"])

        resumed = await control(client, f"/jobs/{job['id']}/resume")
        assert resumed.status_code == 200 and resumed.json()["holds"] == []
        final = await wait_job(client, job["id"], lambda j: j["finishAt"] is not None)
        assert (final["status"], final["finishCount"], final["outcome"]) == (
            "resolved", 5, "succeeded",
        )  # fmt: skip
        # Each command reached the device once, in order.
        assert [r["resource"] for r in fleet.received_by("a")] == [f"/step/{n}" for n in range(5)]
        for action in ("pause", "resume", "cancel"):
            message = assert_json_error(await control(client, f"/jobs/{job['id']}/{action}"), 409)
            assert "resolved" in message, (action, message)
            assert_json_error(await control(client, f"/jobs/999999/{action}"), 404)


async def test_cancel_keeps_the_job_and_its_tasks_readable_unlike_delete(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(GUARD):
        client, fleet, job = await steps_on_one_device(start_gateway, start_simulator, http, 4)

        cancelled = await control(client, f"/jobs/{job['id']}/cancel")

        assert cancelled.status_code == 200, cancelled.text
        # The task in flight finishes normally; the others end cancelled, never sent.
        final = await wait_job(client, job["id"], lambda j: j["finishAt"] is not None)
        assert final["status"] == "cancelled"
        assert final["outcomes"]["resolved"] == {"200": 1}
        assert final["outcomes"]["cancelled"] == 3 and final["outcome"] == "partial"
        assert len(fleet.received_by("a")) == 1
        tasks = await client.get(f"/jobs/{job['id']}/tasks", params={"status": "cancelled"})
        assert tasks.headers["X-Total-Count"] == "3"
        assert_json_error(await control(client, f"/jobs/{job['id']}/cancel"), 409)
        # DELETE keeps the seed's meaning: the job is gone afterwards.
        assert (await client.delete(f"/jobs/{job['id']}")).status_code == 200
        assert_json_error(await client.get(f"/jobs/{job['id']}"), 404)


async def test_retry_makes_a_new_job_of_the_tasks_that_did_not_resolve(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(GUARD):
        gateway = await start_gateway()
        good = await start_simulator(gateway, ["ok1", "ok2"])
        bad = await start_simulator(gateway, ["bad"], error_rate=1.0, error_code=503)
        client = http(gateway)
        body = {
            "batch": [
                entry(["ok1", "bad"], "/first", data={"n": 1}),
                entry(["ok2"], "/second"),
                entry(["bad", "ok1"], "/third", timeout=7),
            ],
            "timeout": 60,
            "rollout": {"maxInFlight": 2},
        }
        job = (await client.post("/jobs", json=body)).json()
        await wait_job(client, job["id"], lambda j: j["finishAt"] is not None)
        default_timeout = gateway.config.tasks.default_timeout

        response = await control(client, f"/jobs/{job['id']}/retry")

        assert response.status_code == 200, response.text
        retry = response.json()
        assert response.headers["Location"] == f"/jobs/{retry['id']}"
        assert retry["id"] != job["id"] and retry["totalCount"] == 2
        assert retry["timeout"] == 60 and retry["rollout"]["maxInFlight"] == 2
        tasks = (await client.get(f"/jobs/{retry['id']}", params={"collection": "true"})).json()
        assert [
            (t["resource"], t["__destination"], t["data"], t["__task"]["timeout"])
            for t in tasks["collection"]
        ] == [("/first", "bad", {"n": 1}, default_timeout), ("/third", "bad", {}, 7.0)]
        await wait_job(client, retry["id"], lambda j: j["finishAt"] is not None)
        assert [r["resource"] for r in bad.received_by("bad")] == ["/first", "/third"] * 2

        # ?status= picks other outcomes: the resolved ones, sent again.
        again = await control(client, f"/jobs/{job['id']}/retry", {"status": "resolved"})
        assert again.status_code == 200 and again.json()["totalCount"] == 3
        await wait_job(client, again.json()["id"], lambda j: j["finishAt"] is not None)
        assert len(good.received_by("ok1")) == 4
        message = assert_json_error(
            await control(client, f"/jobs/{job['id']}/retry", {"status": "expired"}), 409
        )
        assert "no task that ended expired" in message
        assert_json_error(
            await control(client, f"/jobs/{job['id']}/retry", {"status": "pending"}), 400
        )
        assert_json_error(await control(client, "/jobs/999999/retry"), 404)
        # Like every POST, a control request must be declared JSON.
        assert_json_error(await client.post(f"/jobs/{job['id']}/retry"), 415)


async def test_retry_of_a_running_job_is_409(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(GUARD):
        gateway = await start_gateway()
        await start_simulator(gateway, ["a"], latency=0.5)
        client = http(gateway)
        job = (await client.post("/jobs", json={"batch": [entry("a")]})).json()
        message = assert_json_error(await control(client, f"/jobs/{job['id']}/retry"), 409)
        assert "once it has finished" in message


async def waiting_reasons(client: httpx.AsyncClient, job_id: int, count: int) -> list[str]:
    """The ``waiting`` of the job's tasks, polled until ``count`` of them say one."""
    while True:
        tasks = (await client.get(f"/jobs/{job_id}/tasks")).json()
        reasons = [task["__task"]["waiting"] for task in tasks if task["__task"]["waiting"]]
        if len(reasons) >= count:
            return reasons
        await trio.sleep(0.02)


def rfc3339(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat().replace("+00:00", "Z")


async def test_a_scheduled_job_sends_nothing_before_start_at_then_runs(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(GUARD):
        gateway = await start_gateway()
        fleet = await start_simulator(gateway, ["a", "b"])
        client = http(gateway)
        start_at = time.time() + 1.5
        body = {"batch": [entry(["a", "b"])], "schedule": {"startAt": rfc3339(start_at)}}

        job = (await client.post("/jobs", json=body)).json()

        # Held from its creation: its tasks wait, saying why, and no device got anything.
        assert (job["status"], job["holds"]) == ("scheduled", ["scheduled"])
        listed = await client.get("/jobs", params={"status": "scheduled"})
        assert [view["id"] for view in listed.json()] == [job["id"]]
        assert fleet.received_by("a") == [] and fleet.received_by("b") == []
        # Queued, they say they wait for the schedule (not for a pause).
        reasons = await waiting_reasons(client, job["id"], 2)
        assert reasons == ["outside-window", "outside-window"]
        final = await wait_job(client, job["id"], lambda j: j["finishAt"] is not None)
        assert (final["status"], final["holds"], final["finishCount"]) == ("resolved", [], 2)
        tasks = (await client.get(f"/jobs/{job['id']}/tasks")).json()
        for task in tasks:
            finished = datetime.fromisoformat(task["__task"]["finishAt"]).timestamp()
            # Whole milliseconds in the view: a millisecond of margin, never early.
            assert finished >= start_at - 0.001, (task, start_at)

        # A schedule that already ended could never send: refused, naming the field.
        ended = {"batch": [entry("a")], "schedule": {"endAt": rfc3339(time.time() - 1)}}
        message = assert_json_error(await client.post("/jobs", json=ended), 400)
        assert "schedule.endAt" in message
        bad_cron = {
            "batch": [entry("a")],
            "schedule": {"windows": [{"cron": "x", "durationMinutes": 1}]},
        }
        message = assert_json_error(await client.post("/jobs", json=bad_cron), 400)
        assert "cron" in message


async def test_control_requests_take_no_body(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(GUARD):
        gateway = await start_gateway()
        await start_simulator(gateway, ["a"], latency=0.5)
        client = http(gateway)
        job = (await client.post("/jobs", json={"batch": [entry("a")]})).json()
        refused = await client.post(f"/jobs/{job['id']}/pause", json={"batch": []})
        assert "takes no body" in assert_json_error(refused, 400)
        assert (await job_state(client, job["id"]))["status"] != "paused"
        paused = await client.post(f"/jobs/{job['id']}/pause", json={})
        assert paused.status_code == 200 and paused.json()["status"] == "paused"
