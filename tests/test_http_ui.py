"""The dashboard's serving side over a real server: static files and their security headers,
``GET /fleet``, the WebSocket token offered as a subprotocol, and the
``http.websocket_compression`` choice. (The pages themselves run in a real browser:
tests/integration/test_dashboard_browser.py.)"""

from __future__ import annotations

import base64
import json

import trio
import trio.testing
from trio_websocket import HandshakeError, open_websocket_url

from pm.fleet_overview import ThroughputHistory, sample_throughput
from pm.http.auth import subprotocol_token
from pm.http.ui_routes import content_security_policy
from tests.served_app import (
    GUARD,
    TOKEN,
    ServedGateway,
    app_config,
    bearer,
    receive_all,
    serve_app,
)
from tests.waiting import poll_until


def token_subprotocol(token: str) -> str:
    return "pm.bearer." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


async def test_root_redirects_to_the_dashboard(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        response = await gateway.client.get("/")
    assert response.status_code == 302
    assert response.headers["location"] == "/ui/"


async def test_dashboard_files_carry_a_strict_policy(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        page = await gateway.client.get("/ui/")
        script = await gateway.client.get("/ui/main.js")
        style = await gateway.client.get("/ui/style.css")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert style.headers["content-type"] == "text/css; charset=utf-8"
    host = gateway.base_url.removeprefix("http://")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self';" in policy and "style-src 'self';" in policy
    assert f"connect-src 'self' ws://{host};" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    # Everything the page loads is served by the gateway: no other site is named anywhere.
    for body in (page.text, script.text):
        assert "http://" not in body and "https://" not in body and "//cdn" not in body
    assert "<script>" not in page.text and " style=" not in page.text


async def test_an_unknown_dashboard_file_is_a_json_404(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        response = await gateway.client.get("/ui/nothing.js")
    assert response.status_code == 404
    assert response.json()["message"] == "no such path: GET /ui/nothing.js"


def test_a_host_header_that_is_no_host_is_not_written_into_the_policy() -> None:
    assert "ws://" not in content_security_policy("evil.example; script-src *", secure=False)
    assert "wss://gateway:8443" in content_security_policy("gateway:8443", secure=True)


async def test_the_dashboard_loads_without_a_token_but_its_api_calls_need_one(
    secured: ServedGateway,
) -> None:
    with trio.fail_after(GUARD):
        page = await secured.client.get("/ui/")
        fleet = await secured.client.get("/fleet")
        with_token = await secured.client.get("/fleet", headers=bearer())
    assert page.status_code == 200
    assert fleet.status_code == 401
    assert with_token.status_code == 200


async def test_fleet_counts_what_the_fleet_did(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        await gateway.submit({"method": "get", "resource": "/a", "__destination": ["d1", "d2"]})
        await gateway.engine.store.sync_for_reading()
        response = await gateway.client.get("/fleet")
    assert response.status_code == 200
    fleet = response.json()
    assert fleet["tasksDispatched"] >= 2
    assert fleet["sampleInterval"] == 5.0
    assert fleet["health"]["brokerConnected"] is True
    assert set(fleet) >= {"devicesOnline", "devicesOffline", "tasksInFlight", "throughput"}


async def test_fleet_is_in_the_openapi_document(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        document = (await gateway.client.get("/openapi.json")).json()
    assert "/fleet" in document["paths"]
    assert "FleetView" in document["components"]["schemas"]
    # The UI is not API: it answers HTML, not the JSON every documented path promises.
    assert not any(path.startswith("/ui") or path == "/" for path in document["paths"])


def test_throughput_is_the_rate_between_samples() -> None:
    history = ThroughputHistory(capacity=2)
    history.record(10.0, 1_000.0, dispatched=0, answered=0)
    assert history.samples() == []
    history.record(15.0, 1_005.0, dispatched=50, answered=25)
    history.record(20.0, 1_010.0, dispatched=50, answered=75)
    history.record(25.0, 1_015.0, dispatched=60, answered=75)
    rates = [(s.dispatched_per_second, s.answered_per_second) for s in history.samples()]
    assert rates == [(0.0, 10.0), (2.0, 0.0)]  # the oldest dropped beyond capacity
    assert history.samples()[-1].at == "1970-01-01T00:16:55.000Z"


def test_a_token_offered_as_a_subprotocol_is_read_back() -> None:
    token = "abc+/def~ghijklmnop=="
    assert subprotocol_token(["pm.watch", token_subprotocol(token)]) == token
    assert subprotocol_token(["pm.watch"]) is None
    assert subprotocol_token(["pm.bearer.%%%"]) is None


async def test_a_watcher_may_offer_its_token_as_a_subprotocol(secured: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        response = await secured.client.post(
            "/jobs",
            json={"batch": [{"method": "get", "resource": "/a", "__destination": "d1"}]},
            headers=bearer(),
        )
        job_id = response.json()["id"]
        url = f"{secured.ws_url}/jobs/{job_id}/ws"
        async with open_websocket_url(
            url, subprotocols=["pm.watch", token_subprotocol(TOKEN)]
        ) as ws:
            assert ws.subprotocol == "pm.watch"  # the token is never echoed back
            assert '"type":"job"' in await ws.get_message()
        try:
            async with open_websocket_url(
                url, subprotocols=["pm.watch", token_subprotocol("wrong-token-0123456789")]
            ):
                raise AssertionError("a wrong token was accepted")
        except HandshakeError as refused:
            assert getattr(refused, "status_code", 401) == 401


async def handshake_extensions(gateway: ServedGateway) -> str | None:
    """The Sec-WebSocket-Extensions the gateway answers to a browser's permessage-deflate
    offer (a raw handshake: the header as a browser sends it)."""
    host = gateway.base_url.removeprefix("http://")
    address, port = host.rsplit(":", 1)
    job = await gateway.submit({"method": "get", "resource": "/a", "__destination": "d1"})
    stream = await trio.open_tcp_stream(address, int(port))
    async with stream:
        await stream.send_all(
            (
                f"GET /jobs/{job['id']}/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
            ).encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += await stream.receive_some(4096)
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 101"), head
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-extensions":
            return value.strip()
    return None


async def test_websocket_compression_is_refused_by_default(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        assert await handshake_extensions(gateway) is None


async def test_websocket_compression_is_accepted_when_configured() -> None:
    with trio.fail_after(GUARD):
        async with serve_app(app_config(http={"websocket_compression": True})) as gateway:
            accepted = await handshake_extensions(gateway)
    assert accepted is not None and accepted.startswith("permessage-deflate")


async def test_the_sampler_records_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    history = ThroughputHistory()
    totals = iter([(0, 0), (10, 5), (30, 25), (30, 25)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_throughput, history, lambda: next(totals), 5.0, lambda: 0.0)
        await trio.sleep(12)  # samples at 0, 5 and 10 s
        nursery.cancel_scope.cancel()
    rates = [(s.dispatched_per_second, s.answered_per_second) for s in history.samples()]
    assert rates == [(2.0, 1.0), (4.0, 4.0)]


async def test_no_path_trick_reaches_the_api_without_a_token(secured: ServedGateway) -> None:
    host = secured.base_url.removeprefix("http://")
    address, port = host.rsplit(":", 1)
    statuses = {}
    with trio.fail_after(GUARD):
        for path in (
            "/ui/../jobs",
            "/ui/%2e%2e/jobs",
            "/ui/..%2fjobs",
            "/ui//jobs",
            "/ui/x/../../fleet",
        ):
            stream = await trio.open_tcp_stream(address, int(port))
            async with stream:
                await stream.send_all(
                    f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
                )
                answer = b""
                while b"\r\n" not in answer:
                    answer += await stream.receive_some(65536)
            statuses[path] = int(answer.split(b" ", 2)[1])
    # Refused (401) or not found: never an answer of the API.
    assert all(status in (401, 404) for status in statuses.values()), statuses


async def snapshots_seen(gateway: ServedGateway, query: str) -> list[dict]:
    """The job messages a watcher with ``query`` receives while one of a job's two tasks is
    answered, then, 1 s later (ten default coalesce intervals), the other."""
    gateway.devices.auto_answer = False
    earlier = len(gateway.devices.requests)
    job = await gateway.submit({"method": "get", "resource": "/a", "__destination": ["d1", "d2"]})
    async with open_websocket_url(f"{gateway.ws_url}/jobs/{job['id']}/ws?{query}") as ws:
        messages = [json.loads(await ws.get_message())]
        await poll_until(lambda: len(gateway.devices.requests) == earlier + 2)
        first, second = gateway.devices.requests[earlier:]
        gateway.devices.answer(first)
        await trio.sleep(1.0)
        gateway.devices.answer(second)
        final, _ = await receive_all(ws)
    return [message for message in messages + final if message["type"] == "job"]


async def test_a_watcher_may_ask_for_fewer_snapshots(gateway: ServedGateway) -> None:
    with trio.fail_after(GUARD):
        default = await snapshots_seen(gateway, "tasks=none")
        slow = await snapshots_seen(gateway, "tasks=none&interval=30")
    # By default the first answer's change goes out on its own; with ?interval=30 only the
    # first snapshot and the final one (which never waits) arrive.
    # (A snapshot with both tasks done may precede the final one: not what is tested.)
    assert 1 in [m["job"]["doneCount"] for m in default]
    seen = [m["job"]["doneCount"] for m in slow]
    assert seen[0] == 0 and seen[-1] == 2 and 1 not in seen, seen


async def test_an_interval_over_a_minute_is_refused(gateway: ServedGateway) -> None:
    job = await gateway.submit({"method": "get", "resource": "/a", "__destination": "d1"})
    with trio.fail_after(GUARD):
        try:
            async with open_websocket_url(f"{gateway.ws_url}/jobs/{job['id']}/ws?interval=61"):
                raise AssertionError("an interval over 60 s was accepted")
        except HandshakeError as refused:
            assert getattr(refused, "status_code", None) == 400
