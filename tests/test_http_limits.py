"""The ``[limits]``: refusals by the HTTP app (pm/http/app.py: tasks per job, data size, jobs
running, watchers per job) and the oversized answer dropped by the device fleet, through a real
hypercorn server over a real engine with fake devices (``tests/served_app.py``); each test
configures the app it needs. Every test runs under an absolute hang guard."""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from tests.job_api import assert_json_error, entry
from tests.served_app import (
    GUARD,
    app_config,
    scrape,
    serve_app,
)
from tests.waiting import poll_until

# -- limits ------------------------------------------------------------------------------------


async def test_too_many_tasks_is_413_naming_the_limit() -> None:
    async with serve_app(app_config(limits={"max_tasks_per_job": 5})) as gateway:
        with trio.fail_after(GUARD):
            response = await gateway.client.post(
                "/jobs", json={"batch": [entry(["a", "b", "c"]), entry(["d", "e", "f"])]}
            )
            message = assert_json_error(response, 413)
            assert "6 tasks" in message and "limits.max_tasks_per_job = 5" in message
            assert len(gateway.engine) == 0 and gateway.devices.requests == []
            # At the limit is fine.
            await gateway.submit(entry(["a", "b", "c"]), entry(["d", "e"]))


async def test_oversized_data_is_400_naming_the_entry() -> None:
    async with serve_app(app_config(limits={"max_data_bytes": 100})) as gateway:
        with trio.fail_after(GUARD):
            # {"x":"..."} is 8 bytes of JSON around the string.
            fits = {"x": "y" * 92}
            await gateway.submit(entry(data=fits))
            response = await gateway.client.post(
                "/jobs", json={"batch": [entry(data=fits), entry(data={"x": "y" * 93})]}
            )
            message = assert_json_error(response, 400)
            assert "`$.batch[1].data`" in message and "limits.max_data_bytes = 100" in message
            assert len(gateway.engine) == 1


async def test_too_many_running_jobs_is_429_until_one_ends() -> None:
    async with serve_app(app_config(limits={"max_jobs_running": 2})) as gateway:
        with trio.fail_after(GUARD):
            gateway.devices.auto_answer = False
            await gateway.submit(entry("a"))
            await gateway.submit(entry("b"))
            response = await gateway.client.post("/jobs", json={"batch": [entry("c")]})
            message = assert_json_error(response, 429)
            assert "limits.max_jobs_running = 2" in message
            assert response.headers["Retry-After"] == "1"
            assert len(gateway.engine) == 2
            # One ends: there is room again.
            gateway.devices.answer_all()
            await poll_until(lambda: gateway.engine.jobs_running < 2)
            await gateway.submit(entry("c"))
            assert (await scrape(gateway))[
                ("pm_http_limit_refusals_total", (("limit", "max_jobs_running"),))
            ] == 1


async def test_watchers_per_job_are_limited_at_the_handshake() -> None:
    async with serve_app(app_config(limits={"max_watchers_per_job": 2})) as gateway:
        with trio.fail_after(GUARD):
            gateway.devices.auto_answer = False
            first = await gateway.submit(entry("a"))
            other = await gateway.submit(entry("b"))
            url = f"{gateway.ws_url}/jobs/{first['id']}/ws"
            async with open_websocket_url(url) as one, open_websocket_url(url) as two:
                await one.get_message()
                await two.get_message()
                with pytest.raises(ConnectionRejected) as rejected:
                    async with open_websocket_url(url):
                        raise AssertionError("a third watcher must be refused")
                assert rejected.value.status_code == 429
                assert rejected.value.body is not None
                message = json.loads(rejected.value.body)["message"]
                assert "limits.max_watchers_per_job" in message
                # Another job's watchers are counted apart.
                async with open_websocket_url(f"{gateway.ws_url}/jobs/{other['id']}/ws") as ws:
                    await ws.get_message()
                    metrics = await scrape(gateway)
                    assert metrics[("pm_websocket_watchers", ())] == 3
            # Closed watchers free their slots.
            async with open_websocket_url(url) as again:
                await again.get_message()
            await poll_until(lambda: gateway.job(first["id"]).feed.watchers == 0)
            metrics = await scrape(gateway)
            assert metrics[("pm_websocket_watchers", ())] == 0
            assert metrics[("pm_http_limit_refusals_total", (("limit", "max_watchers_per_job"),))]


async def test_an_oversized_answer_is_dropped_and_counted() -> None:
    async with serve_app(app_config(limits={"max_answer_bytes": 200})) as gateway:
        with trio.fail_after(GUARD):
            gateway.devices.auto_answer = False
            job = await gateway.submit(entry("a"))
            await poll_until(lambda: len(gateway.devices.requests) == 1)
            request = gateway.devices.requests[0]
            big = {"id": request["id"], "code": 200, "data": {"pad": "x" * 300}}
            gateway.engine.on_mqtt_message(request["tunnel"], json.dumps(big).encode())
            assert gateway.engine.fleet.dropped["oversized"] == 1
            health = (await gateway.client.get("/healthz")).json()
            assert health["droppedMessages"] == {"oversized": 1}
            # The task did not settle on it; a normal answer still does.
            assert not gateway.job(job["id"]).final
            gateway.devices.answer(request)
            await gateway.job(job["id"]).ended.wait()
            assert gateway.job(job["id"]).record.status == "resolved"
