"""``GET /metrics`` (pm/http/metrics.py) through a real hypercorn server over a real engine with
fake devices (``tests/served_app.py``), agreeing with ``/healthz``. Every test runs under an
absolute hang guard."""

from __future__ import annotations

import trio

from tests.job_api import entry
from tests.served_app import (
    GUARD,
    TOKEN,
    ServedGateway,
    app_config,
    scrape,
    serve_app,
)
from tests.waiting import poll_until

# -- metrics -----------------------------------------------------------------------------------


async def test_metrics_reflect_jobs_tasks_and_drops(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        gateway.devices.auto_answer = False
        running = await gateway.submit(entry(["a", "b", "c"]))
        await poll_until(lambda: len(gateway.devices.requests) == 3)
        first, second, _ = gateway.devices.requests
        gateway.devices.answer(first)
        gateway.devices.answer(second, code=500)
        gateway.engine.on_mqtt_message("/not/an/answer/topic", b"{}")
        gateway.engine.on_mqtt_message(first["tunnel"], b"\xff not json")
        gateway.engine.on_mqtt_message(first["tunnel"], b'{"id": 999999, "code": 200}')
        job = gateway.job(running["id"])
        await poll_until(lambda: job.record.done_count == 2)
        gateway.devices.auto_answer = True
        done = await gateway.submit(entry("d"))
        await gateway.job(done["id"]).ended.wait()

        metrics = await scrape(gateway)

        def value(name: str, **labels: str) -> float:
            return metrics[(name, tuple(sorted(labels.items())))]

        assert value("pm_jobs", status="dispatching") == 1
        assert value("pm_jobs", status="resolved") == 1
        assert value("pm_jobs", status="cancelled") == 0
        assert value("pm_tasks", status="sent") == 1
        assert value("pm_tasks", status="resolved") == 2
        assert value("pm_tasks", status="error") == 1
        assert value("pm_tasks", status="pending") == 0
        assert value("pm_tasks_dispatched_total") == 4
        assert value("pm_tasks_answered_total") == 3
        assert value("pm_tasks_in_flight") == 1
        assert value("pm_job_actors") == 1
        assert value("pm_device_actors") >= 1
        assert value("pm_dropped_messages_total", reason="foreign_topic") == 1
        assert value("pm_dropped_messages_total", reason="malformed") == 1
        assert value("pm_dropped_messages_total", reason="unexpected_id") == 1
        assert value("pm_dropped_messages_total", reason="oversized") == 0
        assert value("pm_broker_connected") == 1
        assert value("pm_broker_reconnects_total") == 0
        assert value("pm_store_writable") == 1
        assert value("pm_store_failed_commits_total") == 0
        assert value("pm_websocket_watchers") == 0
        # No embedded broker behind this app: no restart series rather than a fake 0.
        assert not any(name == "pm_embedded_broker_restarts_total" for name, _ in metrics)

        # A deleted job leaves the gauges (and the collector's cache).
        await gateway.client.delete(f"/jobs/{done['id']}")
        after = await scrape(gateway)
        assert after[("pm_jobs", (("status", "resolved"),))] == 0
        assert after[("pm_tasks", (("status", "resolved"),))] == 1


async def test_metrics_need_the_token_and_count_refusals(secured: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        assert (await secured.client.get("/metrics")).status_code == 401
        metrics = await scrape(secured, Authorization=f"Bearer {TOKEN}")
        assert metrics[("pm_http_unauthorized_total", ())] == 1


async def test_each_app_has_its_own_registry() -> None:
    async with serve_app(app_config()) as one, serve_app(app_config()) as two:
        with trio.fail_after(GUARD):
            one.engine.on_mqtt_message("/elsewhere", b"")
            first, second = await scrape(one), await scrape(two)
            key = ("pm_dropped_messages_total", (("reason", "foreign_topic"),))
            assert (first[key], second[key]) == (1, 0)


async def test_healthz_and_metrics_agree_on_drops(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        for _ in range(3):
            gateway.engine.on_mqtt_message("/remote/x/response", b"[]")
        health = (await gateway.client.get("/healthz")).json()
        metrics = await scrape(gateway)
        assert health["droppedMessages"] == {"malformed": 3}
        assert metrics[("pm_dropped_messages_total", (("reason", "malformed"),))] == 3
