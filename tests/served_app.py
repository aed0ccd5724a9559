"""The HTTP app served by a real hypercorn on a free localhost port, over a real engine whose
MQTT side is :class:`~tests.fakes.FakeDevices`: the harness of ``test_http_*.py`` (its
``gateway`` and ``secured`` fixtures are in ``tests/conftest.py``), with the API tokens and a
reader of ``/metrics``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import hypercorn
import hypercorn.trio
import msgspec
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed

from pm.config import Config, HttpConfig
from pm.engine import Engine, open_engine
from pm.gateway import http_server_config
from pm.http import HttpCounters, create_app, serve, watch_connections
from pm.jobs import Job
from pm.schemas import Health
from tests.fakes import FakeDevices, RecordingPublisher

# Hang guard per test; each normally takes well under a second.
GUARD = 10.0
# Small, so the 413 tests need only a few KiB of body; big enough for 1000 destinations.
MAX_BODY = 64 * 1024
# Task messages a watcher may lag behind before it misses some (production: 1024).
WATCHER_QUEUE = 64
# The API tokens of the ``secured`` app (tests/conftest.py), and one it does not know.
TOKEN = "test-token-0123456789abcdef"
OTHER_TOKEN = "another.token_ABCDEFGHIJ~+/=="
WRONG_TOKEN = "wrong-token-0123456789abcdef"


class ServedGateway:
    """A running app: its URL, an HTTP client, the engine behind it and the fake devices."""

    def __init__(
        self, base_url: str, client: httpx.AsyncClient, engine: Engine, devices: FakeDevices
    ) -> None:
        self.base_url = base_url
        self.ws_url = base_url.replace("http://", "ws://", 1)
        self.client = client
        self.engine = engine
        self.devices = devices

    async def submit(self, *entries: dict[str, Any], **body: Any) -> dict[str, Any]:
        response = await self.client.post("/jobs", json={"batch": list(entries), **body})
        assert response.status_code == 200, response.text
        return response.json()

    def job(self, job_id: int) -> Job:
        job = self.engine.get(job_id)
        assert job is not None
        return job


def health_of(engine: Engine) -> Health:
    """What ``/healthz`` reports for an engine with no broker behind it."""
    return Health(
        status="ok",
        broker_connected=True,
        broker_reconnects=0,
        embedded_broker_restarts=None,
        jobs=len(engine),
        jobs_running=engine.jobs_running,
        device_actors=engine.fleet.live_actors,
        dropped_messages=dict(engine.fleet.dropped),
    )


def app_config(**sections: dict[str, Any]) -> Config:
    """The served app's configuration, with ``sections`` merged over it."""
    base: dict[str, dict[str, Any]] = {
        "http": {"max_body_bytes": MAX_BODY},
        "tasks": {"default_timeout": 30.0},
        "watchers": {"queue_size": WATCHER_QUEUE},
        "store": {"path": ":memory:"},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return msgspec.convert(base, Config)


def local_server_config() -> hypercorn.Config:
    """The gateway's hypercorn settings (``pm serve``'s logging among them), on a free
    127.0.0.1 port."""
    server_config = http_server_config(HttpConfig(host="127.0.0.1", port=0))
    # Tests close their WebSockets; a leftover one must not hold teardown for long.
    server_config.graceful_timeout = 1.0
    return server_config


@asynccontextmanager
async def serve_app(
    config: Config, health: Callable[[Engine], Health] = health_of
) -> AsyncIterator[ServedGateway]:
    """The app over a real engine with fake devices, served by hypercorn on a free port;
    ``health`` stands in for the gateway's (``/healthz``, ``/readyz``, ``/metrics``)."""
    publisher = RecordingPublisher()
    devices = FakeDevices(publisher)
    # The gateway's own server (pm.http.serve) and settings, on a free port; a leftover
    # WebSocket must not hold teardown for long.
    server_config = http_server_config(
        msgspec.structs.replace(config.http, host="127.0.0.1", port=0)
    )
    server_config.graceful_timeout = 1.0
    stop = trio.Event()
    counters = HttpCounters()
    async with open_engine(config, publisher) as engine:
        devices.engine = engine
        app = create_app(engine, config, partial(health, engine), counters)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                partial(
                    serve,
                    app,
                    server_config,
                    send_timeout=config.http.send_timeout,
                    send_buffer_bytes=config.http.send_buffer_bytes,
                    on_send_timeout=counters.count_send_timeout,
                    claim_connection=watch_connections(app, config.http).claim,
                    shutdown_trigger=stop.wait,
                )
            )
            base_url = binds[0]
            async with httpx.AsyncClient(base_url=base_url) as client:
                yield ServedGateway(base_url, client, engine, devices)
            stop.set()


async def receive_all(ws: Any) -> tuple[list[dict[str, Any]], int]:
    """Every message until the server closes, and the close code."""
    messages = []
    while True:
        try:
            messages.append(json.loads(await ws.get_message()))
        except ConnectionClosed as closed:
            return messages, closed.reason.code


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text as {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(gateway: ServedGateway, **headers: str) -> dict[Any, float]:
    """``GET /metrics`` as :func:`samples`."""
    response = await gateway.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)
