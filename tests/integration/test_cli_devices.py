"""``pm devices state`` and ``pm devices show``: live device state from a running gateway, as a
subprocess would see it (the credential actions are in test_device_auth.py and test_cli.py)."""

from __future__ import annotations

import json

import trio

from pm.presence import Presence
from tests.integration.gateways import GatewayFactory, SimulatorFactory, pm
from tests.job_api import entry, post_job, wait_final
from tests.waiting import poll_until


async def test_devices_state_and_show_ask_the_gateway(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: object
) -> None:
    with trio.fail_after(60):
        gateway = await start_gateway()
        assert gateway.engine is not None
        presence = gateway.engine.presence
        simulator = await start_simulator(gateway, ["aa", "bb"])
        client = http(gateway)  # type: ignore[operator]
        job = await wait_final(client, (await post_job(client, entry(["aa", "bb"])))["id"])
        await simulator.disconnect("bb")
        await poll_until(lambda: presence.presence("bb") is Presence.OFFLINE)

        result = await pm("devices", "state", "--url", gateway.http_url, "--json")
        assert result.returncode == 0, result
        states = {device["id"]: device for device in json.loads(result.stdout)}
        assert states["aa"]["presence"] == "online" and states["bb"]["presence"] == "offline"
        assert states["aa"]["counts"] == {"resolved": 1}

        result = await pm(
            "devices", "state", "--url", gateway.http_url, "--presence", "offline", "--json"
        )
        assert result.returncode == 0, result
        assert [device["id"] for device in json.loads(result.stdout)] == ["bb"]
        result = await pm("devices", "state", "--url", gateway.http_url)
        assert result.returncode == 0, result
        assert "2 of 2 devices" in result.stdout and "offline" in result.stdout

        result = await pm("devices", "show", "aa", "--url", gateway.http_url)
        assert result.returncode == 0, result
        assert "online" in result.stdout and f"{job['id']}" in result.stdout

        result = await pm("devices", "show", "nobody", "--url", gateway.http_url)
        assert result.returncode != 0
        assert "no device nobody" in result.stderr
