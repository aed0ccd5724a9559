"""The HTTP API through a real hypercorn server on a free localhost port.

The engine is real; only MQTT is replaced, by :class:`~tests.fakes.FakeDevices`, which
either answers every request at once (``auto_answer``) or holds them until the test answers,
so a job can be caught while it runs. The same API over the real broker is covered in
``tests/integration/``. Every test runs under an absolute hang guard. The harness is
``tests/served_app.py``; the ``gateway`` fixture is in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from pm.engine import Engine
from pm.schemas import WAITING_REASONS, AnswerPathHealth, Health, JobRequest
from tests.job_api import INVALID_BODIES, JSON_BODY, assert_json_error, entry
from tests.served_app import (
    GUARD,
    MAX_BODY,
    ServedGateway,
    app_config,
    health_of,
    receive_all,
    serve_app,
)
from tests.waiting import poll_until

# -- POST /jobs ---------------------------------------------------------------------------


async def test_submit_answers_job_with_task_ids_and_location(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        gateway.devices.auto_answer = False
        response = await gateway.client.post(
            "/jobs",
            json={"timeout": 60, "batch": [entry(["a", "b"]), entry("c", resource="/two")]},
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        job = response.json()
        assert response.headers["location"] == f"/jobs/{job['id']}"
        assert set(job) == {
            "id",
            "createdAt",
            "finishAt",
            "timeout",
            "status",
            "progress",
            "totalCount",
            "doneCount",
            "finishCount",
            "errorCount",
            "pendingCount",
            "sentCount",
            "expiredCount",
            "retriedCount",
            "holds",
            "outcomes",
            "outcome",
            "eta",
            "collection",
        }
        assert job["timeout"] == 60
        assert job["totalCount"] == 3 and job["doneCount"] == 0 and job["finishAt"] is None
        assert len(job["collection"]) == 3 and all(isinstance(i, int) for i in job["collection"])

        gateway.devices.auto_answer = True
        await poll_until(lambda: len(gateway.devices.requests) == 3)
        gateway.devices.answer_all()
        await gateway.job(job["id"]).ended.wait()
        done = (await gateway.client.get(f"/jobs/{job['id']}")).json()
        assert done["status"] == "resolved" and done["finishCount"] == 3
        assert done["collection"] == job["collection"]


async def test_method_case_and_mac_spellings_are_normalized(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        job = await gateway.submit(
            entry(["00-0C-29-1C-E8-01", "000C291CE802", "plain.id_1"], method="PoSt")
        )
        await gateway.job(job["id"]).ended.wait()
        response = await gateway.client.get(f"/jobs/{job['id']}", params={"collection": "true"})
        tasks = response.json()["collection"]
        assert [task["__destination"] for task in tasks] == [
            "00:0c:29:1c:e8:01",
            "00:0c:29:1c:e8:02",
            "plain.id_1",
        ]
        assert {task["method"] for task in tasks} == {"post"}
        assert {request["method"] for request in gateway.devices.requests} == {"post"}


@pytest.mark.parametrize(("body", "expected"), INVALID_BODIES)
async def test_invalid_body_is_400_naming_the_field(
    gateway: ServedGateway, body: Any, expected: str
) -> None:
    with trio.fail_after(GUARD):
        message = assert_json_error(await gateway.client.post("/jobs", json=body), 400)
        assert expected in message
        assert len(gateway.engine) == 0


@pytest.mark.parametrize("raw", [b"", b"{", b'{"batch": [}', b"\xff\xfe", b"null x"])
async def test_malformed_json_is_400(gateway: ServedGateway, raw: bytes) -> None:
    with trio.fail_after(GUARD):
        response = await gateway.client.post("/jobs", content=raw, headers=JSON_BODY)
        message = assert_json_error(response, 400)
        assert message.startswith("malformed JSON") or "Expected" in message


async def test_body_at_the_limit_is_accepted(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        raw = json.dumps({"batch": [entry()]}).encode()
        raw += b" " * (MAX_BODY - len(raw))  # trailing whitespace is valid JSON
        assert len(raw) == MAX_BODY
        response = await gateway.client.post("/jobs", content=raw, headers=JSON_BODY)
        assert response.status_code == 200, response.text


async def test_body_over_the_limit_is_413(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        raw = json.dumps({"batch": [entry(data={"pad": "x" * MAX_BODY})]}).encode()
        response = await gateway.client.post("/jobs", content=raw, headers=JSON_BODY)
        message = assert_json_error(response, 413)
        assert str(MAX_BODY) in message
        assert len(gateway.engine) == 0


async def test_chunked_body_over_the_limit_is_413(gateway: ServedGateway) -> None:
    # No Content-Length to check up front: the cap must hold while the body arrives.
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"batch": [{"method": "get", "resource": "/a", "__destination": "d", "data": '
        yield b'{"pad": "' + b"x" * MAX_BODY + b'"}}]}'

    with trio.fail_after(GUARD):
        response = await gateway.client.post("/jobs", content=chunks(), headers=JSON_BODY)
        assert "content-length" not in response.request.headers
        assert_json_error(response, 413)
        assert len(gateway.engine) == 0


# -- GET /jobs ----------------------------------------------------------------------------


async def test_list_is_newest_first_with_paging_and_total(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        ids = [(await gateway.submit(entry(f"d{n}")))["id"] for n in range(5)]
        response = await gateway.client.get("/jobs")
        assert response.status_code == 200
        assert response.headers["x-total-count"] == "5"
        jobs = response.json()
        assert [job["id"] for job in jobs] == ids[::-1]
        assert all(isinstance(job["collection"][0], int) for job in jobs)

        page = await gateway.client.get("/jobs", params={"limit": 2, "offset": 1})
        assert [job["id"] for job in page.json()] == [ids[3], ids[2]]
        assert page.headers["x-total-count"] == "5"
        past_the_end = await gateway.client.get("/jobs", params={"offset": 10})
        assert past_the_end.json() == [] and past_the_end.headers["x-total-count"] == "5"


async def test_list_filters_by_status(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        resolved = await gateway.submit(entry("fast"))
        await gateway.job(resolved["id"]).ended.wait()
        gateway.devices.auto_answer = False
        running = await gateway.submit(entry("slow"))
        await poll_until(lambda: gateway.job(running["id"]).record.status == "dispatching")

        by_status = {}
        for status in ("resolved", "dispatching", "timeout"):
            response = await gateway.client.get("/jobs", params={"status": status})
            assert response.status_code == 200
            by_status[status] = ([job["id"] for job in response.json()], response.headers)
        assert by_status["resolved"][0] == [resolved["id"]]
        assert by_status["dispatching"][0] == [running["id"]]
        assert by_status["timeout"][0] == []
        assert by_status["timeout"][1]["x-total-count"] == "0"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "done"}, "at `$.status`"),
        ({"status": ""}, "at `$.status`"),
        ({"limit": "0"}, "at `$.limit`"),
        ({"limit": "1001"}, "at `$.limit`"),
        ({"limit": "ten"}, "at `$.limit`"),
        ({"offset": "-1"}, "at `$.offset`"),
        ({"offset": "1.5"}, "at `$.offset`"),
        ({"stauts": "resolved"}, "unknown field `stauts`"),
        # Found by schemathesis: these listed every job, or failed with a 500.
        ({"status": "null"}, "at `$.status`"),
        ({"status": ["resolved", "cancelled"]}, "`status` is given more than once"),
        ({"offset": str(2**63)}, "at `$.offset`"),
    ],
)
async def test_list_bad_query_is_400(
    gateway: ServedGateway, params: dict[str, str], expected: str
) -> None:
    with trio.fail_after(GUARD):
        message = assert_json_error(await gateway.client.get("/jobs", params=params), 400)
        assert expected in message


async def test_job_ids_beyond_sqlite_integers_are_404(gateway: ServedGateway) -> None:
    # Found by schemathesis: the store's query overflowed (500).
    huge = 2**63
    with trio.fail_after(GUARD):
        for method in ("GET", "DELETE"):
            response = await gateway.client.request(method, f"/jobs/{huge}")
            assert assert_json_error(response, 404) == f"no job {huge}"
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(f"{gateway.ws_url}/jobs/{huge}/ws"):
                raise AssertionError("the handshake must be refused")
        assert rejected.value.status_code == 404
        largest = 2**63 - 1
        assert_json_error(await gateway.client.get(f"/jobs/{largest}"), 404)
        response = await gateway.client.get("/jobs", params={"offset": str(largest)})
        assert response.status_code == 200 and response.json() == []


async def test_list_limit_bounds_are_inclusive(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        for limit in ("1", "1000"):
            response = await gateway.client.get("/jobs", params={"limit": limit})
            assert response.status_code == 200


# -- GET /jobs/{id} -----------------------------------------------------------------------


async def test_get_with_collection_embeds_tasks(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        job = await gateway.submit(
            entry(["a", "b"], method="PUT", resource="/x", data={"k": 1}, timeout=5)
        )
        await gateway.job(job["id"]).ended.wait()

        by_ids = (await gateway.client.get(f"/jobs/{job['id']}")).json()
        assert by_ids["collection"] == job["collection"]
        false = await gateway.client.get(f"/jobs/{job['id']}", params={"collection": "false"})
        assert false.json()["collection"] == job["collection"]

        full = (await gateway.client.get(f"/jobs/{job['id']}?collection=true")).json()
        tasks = full["collection"]
        assert [task["id"] for task in tasks] == job["collection"]
        first = tasks[0]
        assert set(first) == {
            "id",
            "method",
            "resource",
            "tunnel",
            "data",
            "__destination",
            "__task",
        }
        assert set(first["__task"]) == {
            "createdAt",
            "finishAt",
            "timeout",
            "status",
            "progress",
            "result",
            "expiresAt",
            "waiting",
            "sends",
            "sentAt",
            "attempts",
            "nextAttemptAt",
        }
        assert first["__task"]["sends"] == 1
        # Sent after its creation, answered after it was sent (same ISO format: text order).
        stamps = first["__task"]
        assert stamps["createdAt"] <= stamps["sentAt"] <= stamps["finishAt"]
        assert first["method"] == "put" and first["resource"] == "/x"
        assert first["data"] == {"k": 1} and first["__destination"] == "a"
        assert first["tunnel"] == "/remote/a/response"
        assert first["__task"]["timeout"] == 5
        assert first["__task"]["status"] == "resolved" and first["__task"]["progress"] == 100
        assert first["__task"]["result"] == {"echo": "/x"}


async def test_get_bad_collection_value_is_400(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        job = await gateway.submit(entry())
        response = await gateway.client.get(f"/jobs/{job['id']}", params={"collection": "maybe"})
        assert "at `$.collection`" in assert_json_error(response, 400)


async def test_unknown_job_is_404(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        assert "no job 99" in assert_json_error(await gateway.client.get("/jobs/99"), 404)
        assert_json_error(await gateway.client.delete("/jobs/99"), 404)
        # Not an int: no route matches at all.
        assert_json_error(await gateway.client.get("/jobs/abc"), 404)
        assert_json_error(await gateway.client.get("/jobs/-1"), 404)


# -- DELETE /jobs/{id} --------------------------------------------------------------------


async def test_delete_running_job_cancels_and_forgets_it(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        gateway.devices.auto_answer = False
        # Both tasks go to one device: the second waits in its mailbox behind the first.
        job = await gateway.submit(entry("dev"), entry("dev", resource="/second"))
        await poll_until(lambda: len(gateway.devices.requests) == 1)

        response = await gateway.client.delete(f"/jobs/{job['id']}")
        assert response.status_code == 200
        final = response.json()
        assert final["status"] == "cancelled" and final["finishAt"] is not None
        assert final["doneCount"] == 2 and final["errorCount"] == 2
        assert final["collection"] == job["collection"]

        assert_json_error(await gateway.client.get(f"/jobs/{job['id']}"), 404)
        assert_json_error(await gateway.client.delete(f"/jobs/{job['id']}"), 404)
        listed = await gateway.client.get("/jobs")
        assert listed.json() == [] and listed.headers["x-total-count"] == "0"
        # The queued task never reached the device, even once the device is free again.
        await poll_until(lambda: gateway.engine.fleet.in_flight == 0)
        assert [request["resource"] for request in gateway.devices.requests] == ["/system/status"]


async def test_delete_finished_job_returns_its_final_state(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        job = await gateway.submit(entry())
        await gateway.job(job["id"]).ended.wait()
        response = await gateway.client.delete(f"/jobs/{job['id']}")
        assert response.status_code == 200 and response.json()["status"] == "resolved"
        assert_json_error(await gateway.client.get(f"/jobs/{job['id']}"), 404)


# -- WebSocket ----------------------------------------------------------------------------


async def test_ws_streams_snapshot_tasks_then_final_job_and_closes_1000(
    gateway: ServedGateway,
) -> None:
    with trio.fail_after(GUARD):
        gateway.devices.auto_answer = False
        job = await gateway.submit(entry(["a", "b"]))
        async with open_websocket_url(f"{gateway.ws_url}/jobs/{job['id']}/ws") as ws:
            first = json.loads(await ws.get_message())
            assert first["type"] == "job"
            assert first["job"]["id"] == job["id"] and "collection" not in first["job"]
            assert first["job"]["status"] in ("pending", "dispatching")
            await poll_until(lambda: len(gateway.devices.requests) == 2)
            gateway.devices.answer_all()
            rest, code = await receive_all(ws)
        assert code == 1000
        messages = [first, *rest]
        assert {message["type"] for message in messages} == {"job", "task"}
        last = messages[-1]
        assert last["type"] == "job" and last["job"]["status"] == "resolved"
        assert last["job"]["doneCount"] == 2 and last["job"]["finishAt"] is not None
        settled = {
            message["task"]["id"]
            for message in messages
            if message["type"] == "task" and message["task"]["__task"]["status"] == "resolved"
        }
        assert settled == set(job["collection"])
        # Nothing after the final snapshot, and no job message claims "final" before it.
        assert all(m["job"]["finishAt"] is None for m in messages[:-1] if m["type"] == "job")


async def test_ws_on_final_job_sends_one_snapshot_and_closes(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        job = await gateway.submit(entry())
        await gateway.job(job["id"]).ended.wait()
        async with open_websocket_url(f"{gateway.ws_url}/jobs/{job['id']}/ws") as ws:
            messages, code = await receive_all(ws)
        assert code == 1000
        assert len(messages) == 1
        assert messages[0]["type"] == "job" and messages[0]["job"]["status"] == "resolved"


async def test_ws_unknown_job_rejects_handshake_with_404(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(f"{gateway.ws_url}/jobs/42/ws"):
                raise AssertionError("the handshake must be refused")
        assert rejected.value.status_code == 404
        assert rejected.value.body is not None
        assert json.loads(rejected.value.body) == {"message": "no job 42"}


async def test_ws_client_disconnect_releases_the_watcher(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        gateway.devices.auto_answer = False
        job = await gateway.submit(entry())
        feed = gateway.job(job["id"]).feed
        async with open_websocket_url(f"{gateway.ws_url}/jobs/{job['id']}/ws") as ws:
            await ws.get_message()
            # Chatter the server ignores must not wedge its reading of the close.
            for _ in range(50):
                await ws.send_message("hello?")
            assert feed.watchers == 1
        await poll_until(lambda: feed.watchers == 0)
        assert not gateway.job(job["id"]).final  # the job does not care


async def test_ws_client_that_never_reads_does_not_slow_the_job(gateway: ServedGateway) -> None:
    tasks = 1000
    with trio.fail_after(GUARD):
        gateway.devices.auto_answer = False
        # ~8 MB of task messages: far more than the socket buffers between server and client.
        gateway.devices.result_padding = 8 * 1024
        job = await gateway.submit(entry([f"d{n}" for n in range(tasks)]))
        async with open_websocket_url(
            # trio-websocket stops reading the socket once this many messages wait unread.
            f"{gateway.ws_url}/jobs/{job['id']}/ws",
            message_queue_size=1,
        ) as ws:
            await poll_until(lambda: len(gateway.devices.requests) == tasks)
            gateway.devices.answer_all()
            # The job ends while this client has read nothing.
            await gateway.job(job["id"]).ended.wait()
            messages, code = await receive_all(ws)
        assert code == 1000
        last = messages[-1]
        assert last["type"] == "job" and last["job"]["status"] == "resolved"
        assert last["job"]["finishCount"] == tasks
        # It fell behind, so it lost task messages (2 per task: sent, resolved), not the end.
        task_messages = sum(message["type"] == "task" for message in messages)
        assert task_messages < 2 * tasks


class _BrokenWatcher:
    def __init__(self, *args: object) -> None:
        pass

    def __enter__(self) -> _BrokenWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def __aiter__(self) -> _BrokenWatcher:
        return self

    async def __anext__(self) -> bytes:
        raise RuntimeError("watcher bug")

    def uncount(self) -> None:  # the first call a watch group makes to its watcher
        raise RuntimeError("watcher bug")


async def test_ws_handler_failure_closes_1011(
    gateway: ServedGateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(GUARD):
        # Running (a job already final is answered without a watcher), its group not made yet:
        # the watcher fails before anything was written, and the handshake is still answered.
        gateway.devices.auto_answer = False
        job = await gateway.submit(entry())
        monkeypatch.setattr(gateway.job(job["id"]), "watch", _BrokenWatcher)
        async with open_websocket_url(f"{gateway.ws_url}/jobs/{job['id']}/ws") as ws:
            messages, code = await receive_all(ws)
        assert messages == [] and code == 1011
        assert "watcher bug" in caplog.text


# -- errors, health, OpenAPI --------------------------------------------------------------


async def test_unknown_path_and_wrong_method_are_json(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        assert "/nowhere" in assert_json_error(await gateway.client.get("/nowhere"), 404)
        assert_json_error(await gateway.client.post("/jobs/1/nothing"), 404)
        wrong = await gateway.client.put("/jobs")
        assert_json_error(wrong, 405)
        assert set(wrong.headers["allow"].split(", ")) >= {"GET", "POST"}
        assert_json_error(await gateway.client.post("/jobs/1"), 405)
        assert_json_error(await gateway.client.delete("/jobs"), 405)
        assert_json_error(await gateway.client.post("/healthz"), 405)
        # The WebSocket path asked over plain HTTP: a client error, not a crash.
        response = await gateway.client.get("/jobs/1/ws")
        assert "only accepts WebSocket" in assert_json_error(response, 400)
        # And the other way round: the handshake is refused with the same JSON errors.
        for path, status in (("/healthz", 400), ("/nowhere", 404)):
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(f"{gateway.ws_url}{path}"):
                    raise AssertionError("the handshake must be refused")
            assert rejected.value.status_code == status
            assert rejected.value.body is not None
            assert list(json.loads(rejected.value.body)) == ["message"]


async def test_unexpected_error_is_a_json_500(
    gateway: ServedGateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**_: Any) -> Any:
        raise RuntimeError("engine bug")

    with trio.fail_after(GUARD):
        monkeypatch.setattr(gateway.engine, "list", broken)
        message = assert_json_error(await gateway.client.get("/jobs"), 500)
        assert "engine bug" not in message
        assert "engine bug" in caplog.text


async def test_healthz(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        await gateway.submit(entry())
        response = await gateway.client.get("/healthz")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body = msgspec.json.decode(response.content, type=Health)
        assert body.status == "ok" and body.jobs == 1
        assert "brokerConnected" in response.json()


async def test_openapi_documents_every_route_from_the_schemas(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        response = await gateway.client.get("/openapi.json")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        document = response.json()
        assert document["openapi"].startswith("3.1")
        paths = document["paths"]
        assert {
            (path, method)
            for path, item in paths.items()
            for method in item
            if method != "parameters"
        } == {
            ("/jobs", "post"),
            ("/jobs", "get"),
            ("/jobs/{id}", "get"),
            ("/jobs/{id}", "delete"),
            ("/jobs/{id}/tasks", "get"),
            ("/jobs/{id}/ws", "get"),
            ("/jobs/{id}/pause", "post"),
            ("/jobs/{id}/resume", "post"),
            ("/jobs/{id}/cancel", "post"),
            ("/jobs/{id}/retry", "post"),
            ("/fleet", "get"),
            ("/devices", "get"),
            ("/devices/{id}", "get"),
            ("/devices/{id}/tasks", "get"),
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
        }
        schemas = document["components"]["schemas"]
        assert {
            "JobRequest",
            "BatchEntry",
            "JobView",
            "TaskView",
            "ErrorBody",
            "Health",
            "Readiness",
            "DeviceView",
            "DeviceTaskView",
        } <= set(schemas)
        # 400 and 403: every endpoint refuses unknown query parameters and other sites.
        assert set(paths["/readyz"]["get"]["responses"]) == {"200", "400", "403", "503"}
        assert "__destination" in schemas["BatchEntry"]["properties"]
        list_parameters = {p["name"]: p for p in paths["/jobs"]["get"]["parameters"]}
        assert set(list_parameters) == {"status", "outcome", "limit", "offset"}
        assert list_parameters["limit"]["schema"]["maximum"] == 1000
        assert "pending" in list_parameters["status"]["schema"]["enum"]
        task_parameters = {p["name"]: p for p in paths["/jobs/{id}/tasks"]["get"]["parameters"]}
        assert set(task_parameters) == {"status", "device", "waiting", "limit", "offset"}
        assert "expired" in task_parameters["status"]["schema"]["enum"]
        assert set(task_parameters["waiting"]["schema"]["enum"]) == set(WAITING_REASONS)
        assert paths["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/JobRequest"
        }
        assert {"200", "400", "413", "429", "503"} <= set(paths["/jobs"]["post"]["responses"])
        # Control: a wrong state is a 409; dry run and the options are documented by example.
        for action in ("pause", "resume", "cancel", "retry"):
            assert {"200", "404", "409"} <= set(
                paths[f"/jobs/{{id}}/{action}"]["post"]["responses"]
            )
        assert [p["name"] for p in paths["/jobs"]["post"]["parameters"]] == ["dryRun"]
        assert "DryRunPlan" in schemas
        examples = paths["/jobs"]["post"]["requestBody"]["content"]["application/json"]["examples"]
        for option in ("expiresIn", "rollout", "abort", "retry", "priority", "schedule"):
            assert option in examples[option]["value"], option
            decoded = msgspec.convert(examples[option]["value"], JobRequest)
            assert decoded.batch, option
        # An open API documents no security.
        assert "security" not in document and "401" not in paths["/jobs"]["get"]["responses"]

        # Every reference resolves inside the document.
        def references(node: Any) -> list[str]:
            if isinstance(node, dict):
                found = [node["$ref"]] if "$ref" in node else []
                return found + [ref for value in node.values() for ref in references(value)]
            if isinstance(node, list):
                return [ref for value in node for ref in references(value)]
            return []

        for ref in references(document):
            assert ref.removeprefix("#/components/schemas/") in schemas, ref


async def test_readyz_answers_503_with_a_reason_per_problem_while_healthz_stays_200() -> None:
    # The gateway's health as the test sets it; the real broker and store faults are in
    # tests/integration/test_readiness.py and test_storage_faults.py.
    state = {"connected": True, "hearing": True}

    def health(engine: Engine) -> Health:
        answer_path = AnswerPathHealth(
            ok=state["hearing"],
            last_round_trip_ms=None,
            probes_sent=1,
            probes_lost=0 if state["hearing"] else 1,
            resubscribes=0,
            reconnects=0,
        )
        return msgspec.structs.replace(
            health_of(engine), broker_connected=state["connected"], answer_path=answer_path
        )

    async with serve_app(app_config(), health) as gateway:
        with trio.fail_after(GUARD):
            ready = await gateway.client.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"ready": True, "reasons": []})
            state["hearing"] = False
            lost = await gateway.client.get("/readyz")
            assert lost.status_code == 503
            assert [r.split(":")[0] for r in lost.json()["reasons"]] == ["answer path"]
            state["connected"] = False
            down = await gateway.client.get("/readyz")
            assert down.status_code == 503
            # Disconnected says it all: no second reason about the probe it implies.
            assert [r.split(":")[0] for r in down.json()["reasons"]] == ["broker"]
            assert (await gateway.client.get("/healthz")).status_code == 200
