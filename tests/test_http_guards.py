"""What the API refuses before it does anything, through a real hypercorn server: hostile JSON
(nesting, invalid UTF-8), bodies that are not JSON (415), cross-site browser requests (403),
unknown query parameters on every endpoint (400); and the seed's ``DELETE ?collection=true``.

Same setup as ``test_http_app.py`` (real engine, fake devices). Every test runs under an
absolute hang guard.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from pm.config import ConfigError, load_config
from pm.http.origins import AllowedOrigins
from tests.job_api import JSON_BODY, assert_json_error, entry, job_body_with_data
from tests.served_app import (
    GUARD,
    MAX_BODY,
    ServedGateway,
    app_config,
    receive_all,
    scrape,
    serve_app,
)

ALLOWED = "https://dash.example.com"


@pytest.fixture
async def gateway() -> AsyncIterator[ServedGateway]:
    async with serve_app(app_config(http={"allowed_origins": [ALLOWED]})) as served:
        yield served


def nested_list(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def assert_no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, [record.getMessage() for record in errors]


# -- hostile JSON --------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [61, 1_000, 30_000])
async def test_a_body_nested_deeper_than_the_limit_is_400_and_counted(
    gateway: ServedGateway, levels: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by trying: data nested ~1,000 levels (7 KB) answered 500 (RecursionError).
    body = job_body_with_data(nested_list(levels))
    assert len(body) < MAX_BODY
    with trio.fail_after(GUARD):
        response = await gateway.client.post("/jobs", content=body, headers=JSON_BODY)
        message = assert_json_error(response, 400)
        assert "nested deeper than 64 levels (limits.max_json_depth)" in message
        assert len(gateway.engine) == 0
        metrics = await scrape(gateway)
        assert metrics[("pm_http_limit_refusals_total", (("limit", "max_json_depth"),))] == 1
    assert_no_error_logged(caplog)


async def test_a_body_at_the_depth_limit_is_accepted_and_served_back(
    gateway: ServedGateway,
) -> None:
    body = job_body_with_data(nested_list(60))  # 64 levels in all
    with trio.fail_after(GUARD):
        response = await gateway.client.post("/jobs", content=body, headers=JSON_BODY)
        assert response.status_code == 200, response.text
        job_id = response.json()["id"]
        await gateway.job(job_id).ended.wait()
        full = await gateway.client.get(f"/jobs/{job_id}", params={"collection": "true"})
        assert full.status_code == 200
        assert full.json()["collection"][0]["data"] == {"x": json.loads(nested_list(60))}


async def test_the_deepest_configurable_limit_still_never_reaches_the_recursion_limit() -> None:
    # limits.max_json_depth at its ceiling: a body that deep is decoded, stored, encoded
    # inside a job view with its tasks, and streamed to a watcher without RecursionError.
    config = app_config(limits={"max_json_depth": 256})
    async with serve_app(config) as gateway:
        with trio.fail_after(GUARD):
            body = job_body_with_data(nested_list(252))
            response = await gateway.client.post("/jobs", content=body, headers=JSON_BODY)
            assert response.status_code == 200, response.text
            job_id = response.json()["id"]
            await gateway.job(job_id).ended.wait()
            full = await gateway.client.get(f"/jobs/{job_id}", params={"collection": "true"})
            assert full.status_code == 200, full.text
            deleted = await gateway.client.delete(f"/jobs/{job_id}?collection=true")
            assert deleted.status_code == 200, deleted.text
    with pytest.raises(ConfigError, match="max_json_depth"):
        load_config(environ={"PM_LIMITS_MAX_JSON_DEPTH": "257"})
    with pytest.raises(ConfigError, match="max_json_depth"):
        load_config(environ={"PM_LIMITS_MAX_JSON_DEPTH": "0"})


@pytest.mark.parametrize(
    "body",
    [
        # Found by trying: invalid UTF-8 inside a string answered 500 (UnicodeDecodeError).
        job_body_with_data(b'"\xff"'),
        b'{"batch": [{"method": "get", "resource": "/\xed\xa0\x80", "__destination": "d"}]}',
        b'{"batch": [{"method": "get", "resource": "/a", "__destination": "\xc0\xaf"}]}',
    ],
)
async def test_invalid_utf8_in_a_string_is_400(
    gateway: ServedGateway, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(GUARD):
        response = await gateway.client.post("/jobs", content=body, headers=JSON_BODY)
        message = assert_json_error(response, 400)
        assert message.startswith("malformed JSON")
        assert len(gateway.engine) == 0
    assert_no_error_logged(caplog)


async def test_the_413_is_counted_with_the_other_limit_refusals(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        raw = json.dumps({"batch": [entry(data={"pad": "x" * MAX_BODY})]}).encode()
        response = await gateway.client.post("/jobs", content=raw, headers=JSON_BODY)
        assert "http.max_body_bytes" in assert_json_error(response, 413)
        metrics = await scrape(gateway)
        assert metrics[("pm_http_limit_refusals_total", (("limit", "max_body_bytes"),))] == 1


# -- only JSON bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (None, "not no Content-Type"),
        ("text/plain", "not `text/plain`"),
        ("application/x-www-form-urlencoded", "not `application/x-www-form-urlencoded`"),
        ("multipart/form-data; boundary=x", "not `multipart/form-data`"),
        ("application/json-seq", "not `application/json-seq`"),
        ("application/json; charset=latin-1", "must be UTF-8"),
    ],
)
async def test_a_post_body_that_is_not_declared_json_is_415(
    gateway: ServedGateway, content_type: str | None, expected: str
) -> None:
    # Found by trying: text/plain, form and multipart bodies created jobs, so any web page
    # could, with a "simple" cross-site request that needs no CORS preflight.
    body = json.dumps({"batch": [entry()]}).encode()
    headers = {} if content_type is None else {"content-type": content_type}
    with trio.fail_after(GUARD):
        response = await gateway.client.post("/jobs", content=body, headers=headers)
        assert expected in assert_json_error(response, 415)
        assert len(gateway.engine) == 0
        metrics = await scrape(gateway)
        assert metrics[("pm_http_rejected_total", (("reason", "content_type"),))] == 1


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_bodies_are_accepted_in_any_spelling(
    gateway: ServedGateway, content_type: str
) -> None:
    body = json.dumps({"batch": [entry()]}).encode()
    with trio.fail_after(GUARD):
        response = await gateway.client.post(
            "/jobs", content=body, headers={"content-type": content_type}
        )
        assert response.status_code == 200, response.text


async def test_a_delete_needs_no_body_but_a_body_it_sends_must_be_json(
    gateway: ServedGateway,
) -> None:
    with trio.fail_after(GUARD):
        first, second = (await gateway.submit(entry()))["id"], (await gateway.submit(entry()))["id"]
        refused = await gateway.client.request(
            "DELETE", f"/jobs/{first}", content=b"x=1", headers={"content-type": "text/plain"}
        )
        assert_json_error(refused, 415)
        assert (await gateway.client.delete(f"/jobs/{first}")).status_code == 200
        with_json = await gateway.client.request(
            "DELETE", f"/jobs/{second}", content=b"{}", headers=JSON_BODY
        )
        assert with_json.status_code == 200


# -- cross-site requests -------------------------------------------------------------------


def test_allowed_origins_logic() -> None:
    origins = AllowedOrigins(["https://Dash.example.com/"])
    host = "gw.local:8080"
    assert origins.allows(None, host)  # not a browser
    assert origins.allows("http://gw.local:8080", host)  # the gateway's own page
    assert origins.allows("http://GW.local:8080", host)
    assert origins.allows("https://dash.example.com", host)
    for foreign in (
        "http://evil.example",
        "http://gw.local:8081",
        "http://gw.local",
        "null",
        "",
        "http://gw.local:8080/path",
        "http://user@gw.local:8080",
        "gw.local:8080",
        "http://[::1",
    ):
        assert not origins.allows(foreign, host), foreign
    assert not origins.allows("http://gw.local:8080", None)


async def test_a_cross_site_request_is_403_whatever_its_method(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        job_id = (await gateway.submit(entry()))["id"]
        evil = {"origin": "http://evil.example"}
        for method, path in (
            ("POST", "/jobs"),
            ("DELETE", f"/jobs/{job_id}"),
            ("GET", "/jobs"),
            ("GET", f"/jobs/{job_id}"),
        ):
            response = await gateway.client.request(
                method, path, headers=evil, json={"batch": [entry()]}
            )
            message = assert_json_error(response, 403)
            assert "http://evil.example" in message and "http.allowed_origins" in message
            assert "access-control-allow-origin" not in response.headers
        assert len(gateway.engine) == 1  # neither created nor deleted
        metrics = await scrape(gateway)
        assert metrics[("pm_http_rejected_total", (("reason", "cross_origin"),))] == 4
        assert metrics[("pm_http_rejected_total", (("reason", "content_type"),))] == 0


async def test_same_origin_and_listed_origins_pass_with_cors_headers(
    gateway: ServedGateway,
) -> None:
    with trio.fail_after(GUARD):
        own = {"origin": gateway.base_url}
        response = await gateway.client.post("/jobs", json={"batch": [entry()]}, headers=own)
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers  # same origin: no CORS

        preflight = await gateway.client.options(
            "/jobs",
            headers={
                "origin": ALLOWED,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type, authorization",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == ALLOWED
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "Content-Type" in preflight.headers["access-control-allow-headers"]

        response = await gateway.client.post(
            "/jobs", json={"batch": [entry()]}, headers={"origin": ALLOWED}
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == ALLOWED
        assert "Location" in response.headers["access-control-expose-headers"]

        refused = await gateway.client.options(
            "/jobs",
            headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
        )
        assert_json_error(refused, 403)


async def test_a_cross_site_websocket_handshake_is_403(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        job_id = (await gateway.submit(entry()))["id"]
        await gateway.job(job_id).ended.wait()
        url = f"{gateway.ws_url}/jobs/{job_id}/ws"
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(url, extra_headers=[("Origin", "http://evil.example")]):
                raise AssertionError("the handshake must be refused")
        assert rejected.value.status_code == 403
        assert rejected.value.body is not None
        assert "http.allowed_origins" in json.loads(rejected.value.body)["message"]
        host = gateway.base_url.removeprefix("http://")
        for origin in (f"http://{host}", ALLOWED):
            async with open_websocket_url(url, extra_headers=[("Origin", origin)]) as ws:
                messages, code = await receive_all(ws)
            assert code == 1000 and messages[-1]["job"]["status"] == "resolved"


async def test_a_cross_site_websocket_handshake_is_counted_with_the_others(
    gateway: ServedGateway,
) -> None:
    # The watchers' WebSocket is served in front of quart (pm.http.watch_route), by the same
    # guards: its refusal is counted where quart's are.
    with trio.fail_after(GUARD):
        job_id = (await gateway.submit(entry()))["id"]
        url = f"{gateway.ws_url}/jobs/{job_id}/ws"
        with pytest.raises(ConnectionRejected):
            async with open_websocket_url(url, extra_headers=[("Origin", "http://evil.example")]):
                raise AssertionError("the handshake must be refused")
        metrics = await scrape(gateway)
        assert metrics[("pm_http_rejected_total", (("reason", "cross_origin"),))] == 1


# -- query strings ---------------------------------------------------------------------------


async def test_unknown_query_parameters_are_400_on_every_endpoint(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        job_id = (await gateway.submit(entry()))["id"]
        await gateway.job(job_id).ended.wait()
        for method, path in (
            ("GET", "/jobs"),
            ("POST", "/jobs"),
            ("GET", f"/jobs/{job_id}"),
            # Found by trying: DELETE took ?foo=1 that GET /jobs refused.
            ("DELETE", f"/jobs/{job_id}"),
            ("GET", "/healthz"),
            ("GET", "/readyz"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
        ):
            response = await gateway.client.request(
                method, f"{path}?foo=1", json={"batch": [entry()]}
            )
            message = assert_json_error(response, 400)
            assert "unknown field `foo`" in message, (method, path, message)
        assert len(gateway.engine) == 1  # the POST created nothing, the DELETE removed nothing
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(f"{gateway.ws_url}/jobs/{job_id}/ws?foo=1"):
                raise AssertionError("the handshake must be refused")
        assert rejected.value.status_code == 400
        assert rejected.value.body is not None
        assert "unknown field `foo`" in json.loads(rejected.value.body)["message"]


async def test_a_parameter_of_another_endpoint_is_unknown_here(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        job_id = (await gateway.submit(entry()))["id"]
        for path in (f"/jobs/{job_id}?limit=1", "/jobs?collection=true", "/jobs?token=x"):
            assert "unknown field" in assert_json_error(await gateway.client.get(path), 400)


# -- DELETE ?collection=true -----------------------------------------------------------------


async def test_delete_with_collection_embeds_the_final_tasks(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        gateway.devices.auto_answer = False
        job = await gateway.submit(entry(["a", "b"]))
        response = await gateway.client.delete(f"/jobs/{job['id']}?collection=true")
        assert response.status_code == 200
        final = response.json()
        assert final["status"] == "cancelled"
        tasks = final["collection"]
        assert [task["id"] for task in tasks] == job["collection"]
        assert {task["__destination"] for task in tasks} == {"a", "b"}
        assert {task["__task"]["status"] for task in tasks} == {"cancelled"}
        assert all(task["__task"]["finishAt"] is not None for task in tasks)

        done = await gateway.submit(entry("c"))
        gateway.devices.answer_all()
        await gateway.job(done["id"]).ended.wait()
        ids_only = await gateway.client.delete(f"/jobs/{done['id']}?collection=false")
        assert ids_only.json()["collection"] == done["collection"]


async def test_openapi_documents_the_refusals(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        paths = (await gateway.client.get("/openapi.json")).json()["paths"]
        operations = [
            operation
            for item in paths.values()
            for method, operation in item.items()
            if method != "parameters"
        ]
        assert all({"400", "403"} <= set(operation["responses"]) for operation in operations)
        assert "415" in paths["/jobs"]["post"]["responses"]
        assert "415" in paths["/jobs/{id}"]["delete"]["responses"]
        delete_parameters = [p["name"] for p in paths["/jobs/{id}"]["delete"]["parameters"]]
        assert delete_parameters == ["collection"]
        watch_parameters = {p["name"]: p for p in paths["/jobs/{id}/ws"]["get"]["parameters"]}
        assert set(watch_parameters) == {"interval", "tasks", "token"}
        assert watch_parameters["tasks"]["schema"]["enum"] == ["each", "batch", "none"]


async def test_hostile_query_strings_are_400_naming_the_parameter(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        for query, named in (
            ("limit=1e400", "$.limit"),
            ("status=%ff", "$.status"),
            ("status=resolved%00", "$.status"),
            ("offset=99999999999999999999999", "$.offset"),
            ("limit=%EF%BC%91", "$.limit"),  # a fullwidth digit
            ("x" * 5000 + "=1", "unknown field"),
            ("limit=1&limit=2", "`limit` is given more than once"),
        ):
            response = await gateway.client.get(f"/jobs?{query}")
            assert named in assert_json_error(response, 400), query


async def test_whatever_a_watcher_sends_is_ignored(
    gateway: ServedGateway, caplog: pytest.LogCaptureFixture
) -> None:
    # Frames from clients are read and dropped unparsed: deep JSON, binary, large frames
    # neither reach a parser nor disturb the stream. Each is under
    # http.max_websocket_message_bytes (64 KiB), beyond which the connection closes with
    # 1009 (tests/test_http_hostile_clients.py).
    with trio.fail_after(GUARD):
        gateway.devices.auto_answer = False
        job = await gateway.submit(entry())
        async with open_websocket_url(f"{gateway.ws_url}/jobs/{job['id']}/ws") as ws:
            await ws.get_message()
            await ws.send_message(nested_list(30_000).decode())
            await ws.send_message(b"\xff\xfe" * 1000)
            await ws.send_message("x" * 60_000)
            gateway.devices.answer_all()
            messages, code = await receive_all(ws)
        assert code == 1000 and messages[-1]["job"]["status"] == "resolved"
    assert_no_error_logged(caplog)


def test_allowed_origins_come_from_the_environment_and_are_checked_at_start() -> None:
    config = load_config(
        environ={"PM_HTTP_ALLOWED_ORIGINS": "https://a.example, http://b.example:8080"}
    )
    assert config.http.allowed_origins == ["https://a.example", "http://b.example:8080"]
    for bad in ("a.example", "https://a.example/", "ftp://a.example", "*"):
        with pytest.raises(ConfigError, match=r"http\.allowed_origins"):
            load_config(environ={"PM_HTTP_ALLOWED_ORIGINS": bad})
