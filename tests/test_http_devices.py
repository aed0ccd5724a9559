"""The device API (GET /devices, /devices/{id}, /devices/{id}/tasks) over a real engine and
store, served by hypercorn; presence set through the engine's book as a source would."""

from __future__ import annotations

from typing import Any

import trio

from pm.presence import Presence
from tests.job_api import entry
from tests.served_app import GUARD, ServedGateway
from tests.waiting import poll_until

MAC = "00:0c:29:1c:e8:01"


async def _finished_job(gateway: ServedGateway, *entries: dict[str, Any]) -> dict[str, Any]:
    job = await gateway.submit(*entries)
    await gateway.job(job["id"]).ended.wait()
    return job


async def test_devices_are_listed_with_presence_work_and_counts(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        presence = gateway.engine.presence
        presence.update("dev-on", Presence.ONLINE, at=1_700_000_000.0)
        presence.update("dev-off", Presence.ONLINE, at=1_700_000_000.0)
        presence.update("dev-off", Presence.OFFLINE, at=1_700_000_060.0)
        await _finished_job(gateway, entry(["dev-on", "dev-tasks-only"]), entry("dev-on"))

        response = await gateway.client.get("/devices")
        assert response.status_code == 200
        assert response.headers["x-total-count"] == "3"
        devices = {device["id"]: device for device in response.json()}
        assert list(devices) == ["dev-off", "dev-on", "dev-tasks-only"]  # by id
        assert devices["dev-off"] == {
            "id": "dev-off",
            "presence": "offline",
            "lastSeen": "2023-11-14T22:14:20.000Z",
            "connectedAt": "2023-11-14T22:13:20.000Z",
            "disconnectedAt": "2023-11-14T22:14:20.000Z",
            "pending": 0,
            "inFlight": None,
            "latencyP50": None,
            "counts": {},
        }
        assert devices["dev-on"]["presence"] == "online"
        assert devices["dev-on"]["counts"] == {"resolved": 2}
        # Heard from by its answers: lastSeen moved past the birth, the median is a number.
        assert devices["dev-on"]["lastSeen"] > "2023-11-14T22:13:20.000Z"
        assert devices["dev-on"]["latencyP50"] >= 0
        # No presence source spoke of it, but it answered: still unknown, seen now.
        assert devices["dev-tasks-only"]["presence"] == "unknown"
        assert devices["dev-tasks-only"]["lastSeen"] is not None
        assert isinstance(devices["dev-tasks-only"]["latencyP50"], float)


async def test_devices_filter_by_presence_and_prefix_and_page(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        for index in range(5):
            gateway.engine.presence.update(f"room-{index}", Presence.ONLINE, at=1.0)
        gateway.engine.presence.update("hall-1", Presence.ONLINE, at=1.0)
        gateway.engine.presence.update("room-9", Presence.OFFLINE, at=1.0)

        async def ids(query: str) -> tuple[list[str], str]:
            response = await gateway.client.get(f"/devices?{query}")
            assert response.status_code == 200, response.text
            return [d["id"] for d in response.json()], response.headers["x-total-count"]

        assert await ids("presence=offline") == (["room-9"], "1")
        assert await ids("presence=online&q=room-&limit=2&offset=1") == (
            ["room-1", "room-2"],
            "5",
        )
        assert await ids("presence=unknown") == ([], "0")
        assert await ids("q=hall") == (["hall-1"], "1")


async def test_one_device_and_its_tasks_newest_first(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        first = await _finished_job(gateway, entry(MAC, resource="/first"))
        gateway.devices.auto_answer = False
        second = await gateway.submit(entry("00-0C-29-1C-E8-01", resource="/second"))
        await poll_until(lambda: len(gateway.devices.requests) == 2)

        response = await gateway.client.get("/devices/000C291CE801")  # any MAC spelling
        assert response.status_code == 200
        device = response.json()
        assert device["id"] == MAC and device["presence"] == "unknown"
        assert device["inFlight"] == second["collection"][0]
        assert device["counts"] == {"resolved": 1, "sent": 1}

        response = await gateway.client.get(f"/devices/{MAC}/tasks")
        assert response.status_code == 200 and response.headers["x-total-count"] == "2"
        tasks = response.json()
        assert [(t["jobId"], t["resource"], t["__task"]["status"]) for t in tasks] == [
            (second["id"], "/second", "sent"),
            (first["id"], "/first", "resolved"),
        ]
        assert tasks[1]["__task"]["result"] == {"echo": "/first"}
        assert tasks[1]["__destination"] == MAC

        response = await gateway.client.get(f"/devices/{MAC}/tasks?status=resolved&limit=1")
        assert [t["id"] for t in response.json()] == first["collection"]
        assert response.headers["x-total-count"] == "1"
        gateway.devices.answer_all()


async def test_unknown_and_invalid_devices_and_queries_are_refused(
    gateway: ServedGateway,
) -> None:
    with trio.fail_after(GUARD):
        for path in ("/devices/nobody", "/devices/nobody/tasks"):
            response = await gateway.client.get(path)
            assert response.status_code == 404
            assert "no device nobody" in response.json()["message"]
        response = await gateway.client.get("/devices/bad%20id")
        assert response.status_code == 400
        assert "invalid device id" in response.json()["message"]
        for query, named in (
            ("presence=away", "$.presence"),
            ("limit=0", "$.limit"),
            ("stauts=online", "stauts"),
        ):
            response = await gateway.client.get(f"/devices?{query}")
            assert response.status_code == 400
            assert named in response.json()["message"]
        gateway.engine.presence.update("known", Presence.OFFLINE, at=1.0)
        response = await gateway.client.get("/devices/known/tasks?status=lost")
        assert response.status_code == 400 and "$.status" in response.json()["message"]
        response = await gateway.client.get("/devices/known?verbose=1")
        assert response.status_code == 400
        response = await gateway.client.get("/devices/known/tasks")
        assert response.status_code == 200 and response.json() == []
