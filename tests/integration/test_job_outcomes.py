"""A job's outcome histogram and summary through the whole gateway: real broker, simulated
devices answering with different codes, REST and WebSocket."""

from __future__ import annotations

from typing import Any

import trio
import trio_websocket

from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.integration.test_watch_ws import read_until_closed, ws_url
from tests.job_api import assert_json_error, entry, post_job, wait_final


async def test_histogram_by_answer_code_and_outcome_filter(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        await start_simulator(gateway, ["ok1", "ok2"])
        await start_simulator(gateway, ["busy"], error_rate=1.0, error_code=503)
        await start_simulator(gateway, ["gone"], error_rate=1.0, error_code=404)
        client = http(gateway)
        mixed = await post_job(client, entry(["ok1", "ok2", "busy", "gone"]))
        good = await post_job(client, entry(["ok1"]))
        bad = await post_job(client, entry(["busy"]))
        job = await wait_final(client, mixed["id"])
        assert job["status"] == "resolved"
        assert job["outcomes"] == {
            "resolved": {"200": 2},
            "error": {"503": 1, "404": 1},
            "timeout": 0,
            "expired": 0,
            "cancelled": 0,
        }
        assert job["outcome"] == "partial" and job["eta"] is None
        # Each WebSocket job message carries them too (here the final snapshot).
        async with trio_websocket.open_websocket_url(
            ws_url(gateway.http_url, mixed["id"])
        ) as connection:
            [message] = await read_until_closed(connection)
        assert message["job"]["outcomes"] == job["outcomes"]
        assert message["job"]["outcome"] == "partial"
        assert (await wait_final(client, good["id"]))["outcome"] == "succeeded"
        assert (await wait_final(client, bad["id"]))["outcome"] == "failed"

        for outcome, expected in (
            ("partial", [mixed["id"]]),
            ("succeeded", [good["id"]]),
            ("failed", [bad["id"]]),
        ):
            listed = await client.get("/jobs", params={"outcome": outcome})
            assert [view["id"] for view in listed.json()] == expected, outcome
            assert listed.headers["X-Total-Count"] == "1"
        listed = await client.get("/jobs", params={"outcome": "failed", "status": "resolved"})
        assert [view["id"] for view in listed.json()] == [bad["id"]]
        assert listed.json()[0]["outcomes"]["error"] == {"503": 1}
        message = assert_json_error(await client.get("/jobs", params={"outcome": "meh"}), 400)
        assert "outcome" in message
