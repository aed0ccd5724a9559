"""The REST API's status codes and validation through the whole gateway: embedded broker,
simulated devices, the real server on a free port. (tests/test_http_app.py covers the same
API in more depth with MQTT replaced, to catch jobs mid-flight deterministically.)"""

from __future__ import annotations

from typing import Any

import trio

from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.job_api import (
    INVALID_BODIES,
    JSON_BODY,
    assert_json_error,
    entry,
    post_job,
    wait_final,
)


async def test_every_invalid_body_is_a_400_naming_the_field(
    start_gateway: GatewayFactory, http: Any
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway(http={"max_body_bytes": 4096})
        client = http(gateway)
        for body, expected in INVALID_BODIES:
            message = assert_json_error(await client.post("/jobs", json=body), 400)
            assert expected in message, (body, message)
        for raw in (b"", b"{", b"\xff\xfe"):
            response = await client.post("/jobs", content=raw, headers=JSON_BODY)
            assert_json_error(response, 400)
        big = {"batch": [entry("d", data={"blob": "x" * 5000})]}
        assert_json_error(await client.post("/jobs", json=big), 413)
        listed = await client.get("/jobs")
        assert listed.json() == [] and listed.headers["X-Total-Count"] == "0"


async def test_endpoints_and_status_codes(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        await start_simulator(gateway, ["a", "b"])
        client = http(gateway)
        created = [await post_job(client, entry(["a", "b"], f"/r/{i}")) for i in range(3)]
        for job in created:
            await wait_final(client, job["id"])
        response = await client.post("/jobs", json={"batch": [entry("a")]})
        assert response.headers["Location"] == f"/jobs/{response.json()['id']}"
        await wait_final(client, response.json()["id"])

        page = await client.get("/jobs", params={"limit": 2, "offset": 1})
        assert page.headers["X-Total-Count"] == "4"
        assert [job["id"] for job in page.json()] == [created[2]["id"], created[1]["id"]]
        assert page.json()[0]["collection"] == created[2]["collection"]
        resolved = await client.get("/jobs", params={"status": "resolved"})
        assert resolved.headers["X-Total-Count"] == "4"
        assert (await client.get("/jobs", params={"status": "pending"})).json() == []
        assert_json_error(await client.get("/jobs", params={"status": "nope"}), 400)
        assert_json_error(await client.get("/jobs", params={"limit": 1001}), 400)
        assert_json_error(await client.get("/jobs", params={"offset": -1}), 400)

        one = (await client.get(f"/jobs/{created[0]['id']}")).json()
        assert one["collection"] == created[0]["collection"]
        full = await client.get(f"/jobs/{created[0]['id']}", params={"collection": "true"})
        assert [task["id"] for task in full.json()["collection"]] == created[0]["collection"]
        assert_json_error(await client.get("/jobs/999999"), 404)
        assert_json_error(await client.delete("/jobs/999999"), 404)
        assert_json_error(await client.get("/nowhere"), 404)
        assert_json_error(await client.put("/jobs"), 405)

        deleted = await client.delete(f"/jobs/{created[0]['id']}")
        assert deleted.status_code == 200 and deleted.json()["status"] == "resolved"
        assert_json_error(await client.get(f"/jobs/{created[0]['id']}"), 404)
        assert (await client.get("/jobs")).headers["X-Total-Count"] == "3"

        health = (await client.get("/healthz")).json()
        assert health["status"] == "ok" and health["brokerConnected"] is True
        openapi = (await client.get("/openapi.json")).json()
        assert openapi["openapi"].startswith("3.1")
        assert {"/jobs", "/jobs/{id}", "/jobs/{id}/ws", "/healthz"} <= set(openapi["paths"])
