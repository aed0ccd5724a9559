"""API bearer tokens (pm/http/auth.py): the token set on its own, then every endpoint and the
WebSocket through a real hypercorn server over a real engine with fake devices
(``tests/served_app.py``). Every test that serves runs under an absolute hang guard."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from pm.config import ConfigError, load_config
from pm.http.auth import BearerTokens, bearer_token
from pm.logs import LOG_FORMATS, LogFormat, configure_logging
from tests.job_api import assert_json_error, entry
from tests.served_app import (
    GUARD,
    OTHER_TOKEN,
    TOKEN,
    WRONG_TOKEN,
    ServedGateway,
    bearer,
    receive_all,
)

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


# Loggers of the test's own clients (trio-websocket logs the URL it connects to): not the
# gateway's output.
CLIENT_LOGGERS = ("httpx", "httpcore", "trio-websocket")


@contextmanager
def pm_serve_log(log_format: LogFormat) -> Iterator[io.StringIO]:
    """What ``pm serve --log-level debug --log-format <log_format>`` prints, collected: its own
    handler and formatter on the root logger, at debug (the most it ever logs)."""
    root = logging.getLogger()
    level = root.level
    output = io.StringIO()
    handler = configure_logging("debug", log_format)
    handler.setStream(output)
    handler.addFilter(lambda record: not record.name.startswith(CLIENT_LOGGERS))
    try:
        yield output
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _engine_bug(*args: object, **kwargs: object) -> NoReturn:
    raise RuntimeError("engine bug")


@pytest.mark.parametrize("log_format", LOG_FORMATS)
async def test_tokens_are_never_logged(
    secured: ServedGateway, monkeypatch: pytest.MonkeyPatch, log_format: LogFormat
) -> None:
    # The app is served with the gateway's hypercorn settings (tests/served_app.py) and logs
    # through pm serve's handler. A token could reach that output through an access line (the
    # gateway keeps none; one whose format had the query string would show ?token=), through
    # the line an unexpected error logs about its request (a WebSocket's URL carries ?token=),
    # or through a traceback or a JSON field of that line.
    with pm_serve_log(log_format) as output, trio.fail_after(GUARD):
        created = await secured.client.post("/jobs", json={"batch": [entry()]}, headers=bearer())
        job_id = created.json()["id"]
        await secured.job(job_id).ended.wait()
        for headers in (bearer(), bearer(WRONG_TOKEN), bearer(OTHER_TOKEN)):
            await secured.client.get("/jobs", headers=headers)
            await secured.client.post("/jobs", content=b"{oops", headers=headers)
        watch_url = f"{secured.ws_url}/jobs/{job_id}/ws"
        with pytest.raises(ConnectionRejected):
            async with open_websocket_url(f"{watch_url}?token={WRONG_TOKEN}"):
                pass
        async with open_websocket_url(f"{watch_url}?token={TOKEN}") as ws:
            assert (await receive_all(ws))[1] == 1000
        # Unexpected errors, logged with the request they happened in.
        monkeypatch.setattr(secured.engine, "list", _engine_bug)
        assert_json_error(await secured.client.get("/jobs", headers=bearer(OTHER_TOKEN)), 500)
        monkeypatch.setattr(secured.engine, "find", _engine_bug)
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(f"{watch_url}?token={TOKEN}"):
                pass
        assert rejected.value.status_code == 500
    logged = output.getvalue()
    # Both errors are in this output, naming the request: the paths that could leak were taken.
    assert "RuntimeError: engine bug" in logged and "GET /jobs failed" in logged, logged
    assert f"WebSocket /jobs/{job_id}/ws failed" in logged, logged
    for token in (TOKEN, OTHER_TOKEN, WRONG_TOKEN):
        assert token not in logged, logged
