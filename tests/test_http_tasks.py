"""``GET /jobs/{id}/tasks``: a job's tasks paged and filtered, over the real HTTP server and
engine with fake devices (held unanswered, so tasks stay sent or waiting)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio

from pm.http.queries import DeviceTasksQuery, JobTasksQuery
from pm.presence import Presence
from tests.job_api import assert_json_error, entry
from tests.served_app import GUARD, ServedGateway, app_config, serve_app
from tests.waiting import poll_until

MAC = "00:0c:29:1c:e8:01"


async def tasks_of(
    gateway: ServedGateway, job_id: int, **params: Any
) -> tuple[list[dict[str, Any]], int]:
    response = await gateway.client.get(f"/jobs/{job_id}/tasks", params=params)
    assert response.status_code == 200, response.text
    return response.json(), int(response.headers["x-total-count"])


async def test_a_jobs_tasks_filtered_by_status_device_and_waiting_and_paged(
    gateway: ServedGateway,
) -> None:
    with trio.fail_after(GUARD):
        gateway.devices.auto_answer = False
        gateway.engine.presence.update("off", Presence.OFFLINE, 0.0)
        job = await gateway.submit(
            entry(["a", "00-0C-29-1C-E8-01", "off"], "/first"), entry(["a", MAC, "off"], "/then")
        )
        await poll_until(lambda: len(gateway.devices.requests) == 2)
        await poll_until(lambda: gateway.job(job["id"]).record.tasks[2].waiting is not None)

        everything, total = await tasks_of(gateway, job["id"])
        assert total == 6 and [t["id"] for t in everything] == job["collection"]
        sent, total = await tasks_of(gateway, job["id"], status="sent")
        assert total == 2 and {t["__destination"] for t in sent} == {"a", MAC}
        busy, total = await tasks_of(gateway, job["id"], waiting="device-busy")
        assert total == 2 and {t["resource"] for t in busy} == {"/then"}
        offline, total = await tasks_of(gateway, job["id"], waiting="device-offline")
        assert total == 2 and {t["__destination"] for t in offline} == {"off"}
        # Any spelling of a MAC finds its tasks.
        by_mac, total = await tasks_of(gateway, job["id"], device="000C291CE801")
        assert total == 2 and [t["resource"] for t in by_mac] == ["/first", "/then"]
        page, total = await tasks_of(gateway, job["id"], status="pending", limit=2, offset=4)
        assert (page, total) == ([], 4)
        page, total = await tasks_of(gateway, job["id"], status="pending", limit=2, offset=1)
        assert total == 4 and [t["id"] for t in page] == job["collection"][3:5]
        both, total = await tasks_of(gateway, job["id"], device="off", status="pending")
        assert total == 2 and all(t["__task"]["waiting"] == "device-offline" for t in both)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "done"}, "at `$.status`"),
        ({"waiting": "asleep"}, "at `$.waiting`"),
        ({"device": "a b"}, "device: invalid device id 'a b'"),
        ({"limit": "0"}, "at `$.limit`"),
        ({"offset": "-1"}, "at `$.offset`"),
        ({"stauts": "sent"}, "unknown field `stauts`"),
    ],
)
async def test_bad_task_query_is_400_naming_the_parameter(
    gateway: ServedGateway, params: dict[str, str], expected: str
) -> None:
    with trio.fail_after(GUARD):
        job = await gateway.submit(entry("a"))
        response = await gateway.client.get(f"/jobs/{job['id']}/tasks", params=params)
        assert expected in assert_json_error(response, 400)


async def test_tasks_of_an_unknown_job_is_404(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        response = await gateway.client.get("/jobs/999/tasks")
        assert assert_json_error(response, 404) == "no job 999"


async def test_a_stored_jobs_tasks_are_read_a_page_at_a_time_from_the_store() -> None:
    # max_finished_tasks = 0: a finished job leaves memory at once; the store serves it.
    async with serve_app(app_config(tasks={"max_finished_tasks": 0})) as gateway:
        with trio.fail_after(GUARD):
            job = await gateway.submit(entry(["a", "b", "00-0C-29-1C-E8-01"], "/x"))
            await poll_until(lambda: gateway.engine.get(job["id"]) is None)
            everything, total = await tasks_of(gateway, job["id"])
            assert total == 3 and [t["id"] for t in everything] == job["collection"]
            assert {t["__task"]["status"] for t in everything} == {"resolved"}
            assert everything[0]["resource"] == "/x" and everything[0]["tunnel"] == (
                "/remote/a/response"
            )
            page, total = await tasks_of(gateway, job["id"], status="resolved", limit=1, offset=1)
            assert total == 3 and [t["id"] for t in page] == job["collection"][1:2]
            by_mac, total = await tasks_of(gateway, job["id"], device="000c291ce801")
            assert total == 1 and by_mac[0]["__destination"] == MAC
            assert await tasks_of(gateway, job["id"], status="pending") == ([], 0)
            assert await tasks_of(gateway, job["id"], waiting="device-busy") == ([], 0)
            response = await gateway.client.get(f"/jobs/{job['id'] + 1}/tasks")
            assert assert_json_error(response, 404) == f"no job {job['id'] + 1}"


def test_the_two_task_listings_document_their_own_order() -> None:
    # Job tasks page in job order, a device's tasks newest first: each offset says which.
    def offset_description(query: type) -> str:
        schema = msgspec.json.schema(query)
        return schema["$defs"][query.__name__]["properties"]["offset"]["description"]

    assert offset_description(JobTasksQuery) == "tasks to skip, in job order"
    assert offset_description(DeviceTasksQuery) == "tasks to skip, newest first"
