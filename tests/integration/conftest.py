"""Fixtures of the integration tests: a mosquitto subprocess, the whole gateway (embedded
broker child, MQTT client, engine, HTTP server) and simulated devices, all on free localhost
ports and stopped with the test. Plain helpers are in ``brokers.py`` and ``gateways.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pm.broker.mosquitto._config import find_mosquitto
from pm.gateway import Gateway, run_gateway
from pm.simulator import Simulator, SimulatorSettings, run_simulator
from tests.integration.brokers import MosquittoBroker
from tests.integration.gateways import GatewayFactory, SimulatorFactory, gateway_config


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running mosquitto on a free 127.0.0.1 port; killed at the end of the test.

    Fails (does not skip) when mosquitto is missing: CI installs it, and a silently skipped
    broker test would hide a broken MQTT client.
    """
    executable = find_mosquitto()
    if executable is None:
        pytest.fail("mosquitto not found on PATH: install it with `apt-get install -y mosquitto`")
    broker = MosquittoBroker(executable, tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# -- the whole gateway, and simulated devices -------------------------------------------------


@pytest.fixture
def start_gateway(nursery: trio.Nursery) -> GatewayFactory:
    """``await start_gateway(tasks={"default_timeout": 5})``: a real gateway (embedded amqtt
    broker in a child process, MQTT client, engine, HTTP server) on free ports, stopped with
    the test."""

    async def start(**sections: dict[str, Any]) -> Gateway:
        with trio.fail_after(20):
            return await nursery.start(run_gateway, gateway_config(**sections))

    return start


@pytest.fixture
def start_simulator(nursery: trio.Nursery) -> SimulatorFactory:
    """``await start_simulator(gateway, ["aa", "bb"], latency=0.1)``: devices on real MQTT
    connections to the gateway's broker."""

    async def start(gateway: Gateway, devices: list[str], **settings: Any) -> Simulator:
        with trio.fail_after(30):
            return await nursery.start(
                run_simulator,
                SimulatorSettings(
                    host=gateway.mqtt_host,
                    port=gateway.mqtt_port,
                    devices=devices,
                    **{"record_requests": True, **settings},
                ),
            )

    return start


@pytest.fixture
async def http(nursery: trio.Nursery) -> AsyncIterator[Callable[[Gateway], httpx.AsyncClient]]:
    """``http(gateway)``: an httpx client for that gateway's API, closed with the test."""
    clients: list[httpx.AsyncClient] = []

    def client(gateway: Gateway) -> httpx.AsyncClient:
        made = httpx.AsyncClient(base_url=gateway.http_url, timeout=10)
        clients.append(made)
        return made

    yield client
    for made in clients:
        await made.aclose()
