"""API tokens, the ``[limits]``, and ``GET /metrics``, through a real hypercorn server.

Same setup as ``test_http_app.py`` (real engine, fake devices); each test configures the app
it needs. Every test runs under an absolute hang guard.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionRejected, open_websocket_url

from pm.config import ConfigError, load_config
from pm.http.auth import BearerTokens, bearer_token
from tests.job_api import assert_json_error, entry
from tests.served_app import GUARD, ServedGateway, app_config, receive_all, serve_app
from tests.waiting import poll_until

TOKEN = "test-token-0123456789abcdef"
OTHER_TOKEN = "another.token_ABCDEFGHIJ~+/=="
WRONG_TOKEN = "wrong-token-0123456789abcdef"


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def secured() -> AsyncIterator[ServedGateway]:
    async with serve_app(app_config(api={"tokens": [TOKEN, OTHER_TOKEN]})) as served:
        yield served


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text as {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(gateway: ServedGateway, **headers: str) -> dict[Any, float]:
    response = await gateway.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


# -- tokens: unit ----------------------------------------------------------------------------


def test_no_tokens_means_open() -> None:
    tokens = BearerTokens([])
    assert not tokens.required
    assert tokens.allows(None) and tokens.allows("Bearer anything")


def test_any_configured_token_passes_and_nothing_else() -> None:
    tokens = BearerTokens([TOKEN, OTHER_TOKEN])
    assert tokens.required
    assert tokens.allows(f"Bearer {TOKEN}") and tokens.allows(f"bearer {OTHER_TOKEN}")
    assert tokens.allows(f"  BEARER   {TOKEN}  ")
    for header in (None, "", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN} x"):
        assert not tokens.allows(header), header
    assert not tokens.allows(f"Bearer {TOKEN[:-1]}")
    # The query token stands in only when no header was sent.
    assert tokens.allows(None, TOKEN)
    assert not tokens.allows(f"Bearer {WRONG_TOKEN}", TOKEN)
    assert not tokens.allows(None, WRONG_TOKEN)
    # Non-ASCII input is compared (and refused), never an exception.
    assert not tokens.allows("Bearer jeton-\u00e9\udcff-0123456789")


def test_tokens_do_not_leak_through_repr() -> None:
    assert TOKEN not in repr(BearerTokens([TOKEN])) and "1 tokens" in repr(BearerTokens([TOKEN]))


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token("Token abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token("Bearer a b") is None


def test_tokens_from_the_environment_are_comma_separated() -> None:
    config = load_config(environ={"PM_API_TOKENS": f"{TOKEN}, {OTHER_TOKEN},"})
    assert config.api.tokens == [TOKEN, OTHER_TOKEN]
    assert load_config(environ={}).api.tokens == []


@pytest.mark.parametrize("token", ["short-token", "has space in it 0123", "semi;colon0123456789"])
def test_a_weak_or_malformed_token_stops_the_gateway_without_showing_it(token: str) -> None:
    with pytest.raises(ConfigError, match=r"\$\.api\.tokens\[0\]") as caught:
        load_config(environ={"PM_API_TOKENS": token})
    assert token not in str(caught.value)


# -- tokens: over HTTP and WebSocket -----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/jobs"),
        ("POST", "/jobs"),
        ("GET", "/jobs/1"),
        ("DELETE", "/jobs/1"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/no/such/path"),  # says nothing about which paths exist
    ],
)
async def test_every_endpoint_needs_a_token(secured: ServedGateway, method: str, path: str) -> None:
    with trio.fail_after(GUARD):
        for headers in ({}, bearer(WRONG_TOKEN), {"Authorization": f"Basic {TOKEN}"}):
            response = await secured.client.request(method, path, headers=headers, json={})
            message = assert_json_error(response, 401)
            assert "bearer token" in message
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN not in response.text


async def test_a_valid_token_opens_every_endpoint(secured: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        for token in (TOKEN, OTHER_TOKEN):
            response = await secured.client.post(
                "/jobs", json={"batch": [entry()]}, headers=bearer(token)
            )
            assert response.status_code == 200, response.text
            job_id = response.json()["id"]
            for path in ("/jobs", f"/jobs/{job_id}", "/metrics", "/openapi.json"):
                response = await secured.client.get(path, headers=bearer(token))
                assert response.status_code == 200, (path, response.text)
            response = await secured.client.get("/no/such/path", headers=bearer(token))
            assert_json_error(response, 404)


async def test_healthz_stays_open(secured: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        response = await secured.client.get("/healthz")
        assert response.status_code == 200
        assert response.json()["status"] == "ok"


async def test_readyz_stays_open(secured: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        response = await secured.client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"ready": True, "reasons": []}


async def test_the_openapi_document_says_a_token_is_required(secured: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        document = (await secured.client.get("/openapi.json", headers=bearer())).json()
        assert document["security"] == [{"bearerToken": []}]
        assert document["components"]["securitySchemes"]["bearerToken"]["scheme"] == "bearer"
        assert document["paths"]["/healthz"]["get"]["security"] == []
        assert "401" in document["paths"]["/jobs"]["post"]["responses"]
        assert "401" not in document["paths"]["/healthz"]["get"]["responses"]
        assert document["paths"]["/readyz"]["get"]["security"] == []


async def test_websocket_needs_a_token_in_the_header_or_the_query(secured: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        job_id = (
            await secured.client.post("/jobs", json={"batch": [entry()]}, headers=bearer())
        ).json()["id"]
        await secured.job(job_id).ended.wait()
        url = f"{secured.ws_url}/jobs/{job_id}/ws"
        for refused_url, headers in (
            (url, []),
            (f"{url}?token={WRONG_TOKEN}", []),
            (url, [("Authorization", f"Bearer {WRONG_TOKEN}")]),
            # The header wins: a wrong header is not rescued by a right query token.
            (f"{url}?token={TOKEN}", [("Authorization", f"Bearer {WRONG_TOKEN}")]),
        ):
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(refused_url, extra_headers=headers):
                    raise AssertionError("the handshake must be refused")
            assert rejected.value.status_code == 401
            assert rejected.value.body is not None
            assert "bearer token" in json.loads(rejected.value.body)["message"]
        for accepted_url, headers in (
            (f"{url}?token={TOKEN}", []),
            (url, [("Authorization", f"Bearer {OTHER_TOKEN}")]),
        ):
            async with open_websocket_url(accepted_url, extra_headers=headers) as ws:
                messages, code = await receive_all(ws)
            assert code == 1000 and messages[-1]["job"]["status"] == "resolved"


async def test_tokens_are_never_logged(
    secured: ServedGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(GUARD):
        for headers in (bearer(), bearer(WRONG_TOKEN), bearer(OTHER_TOKEN)):
            await secured.client.get("/jobs", headers=headers)
            await secured.client.post("/jobs", content=b"{oops", headers=headers)
        with pytest.raises(ConnectionRejected):
            async with open_websocket_url(f"{secured.ws_url}/jobs/1/ws?token={WRONG_TOKEN}"):
                pass
    # What the test's own clients log (trio-websocket logs the URL it connects to) is not the
    # gateway's doing.
    clients = ("httpx", "httpcore", "trio-websocket")
    logged = "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith(clients)
    )
    for token in (TOKEN, OTHER_TOKEN, WRONG_TOKEN):
        assert token not in logged


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
