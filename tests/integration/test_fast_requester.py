"""The benchmark's ceiling requesters (bench/_fast_requester.py, bench/_paho_requester.py)
complete their round trips through the real embedded broker with simulated devices.

Real sockets, so real time: a hang guard per test, small N."""

from __future__ import annotations

import trio

from bench._fast_requester import fast_round_trips
from bench._paho_requester import paho_threaded_round_trips
from tests.integration.gateways import GatewayFactory, SimulatorFactory

DEVICES = [f"dev-{n}" for n in range(60)]


async def test_fast_requester_round_trips_through_the_embedded_broker(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        # Two devices share each connection, like the benchmark's multiplexed fleet.
        simulator = await start_simulator(gateway, DEVICES, connections=30)
        # The second burst reuses packet ids and topics, at most 7 requests unanswered.
        for window in (0, 7):
            rate = await fast_round_trips(gateway.mqtt_port, DEVICES, window=window)
            assert rate > 0
        for device in DEVICES:
            requests = simulator.received_by(device)
            assert [r["tunnel"] for r in requests] == [f"/bench/{device}/answer"] * 2
        assert simulator.stats.answered == 2 * len(DEVICES)


async def test_answers_acknowledged_while_requests_are_still_written(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    # Writes of about one request each: answers (and the PUBACKs owed for them) may arrive
    # while requests are still being written, and a PUBACK must never land inside one. Through
    # a real broker that interleaving is not certain (with 400 devices, writes cut anywhere
    # hung 2 runs of 4); tests/test_fast_requester.py forces it.
    devices = [f"dev-{n}" for n in range(150)]
    with trio.fail_after(30):
        gateway = await start_gateway()
        await start_simulator(gateway, devices, connections=20)
        for _ in range(2):
            assert await fast_round_trips(gateway.mqtt_port, devices, write_bytes=40) > 0


async def test_threaded_paho_requester_round_trips_through_the_embedded_broker(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        simulator = await start_simulator(gateway, DEVICES)  # one connection per device
        port = gateway.mqtt_port
        rate = await trio.to_thread.run_sync(
            lambda: paho_threaded_round_trips(port, DEVICES, timeout=20)
        )
        assert rate > 0
        for device in DEVICES:
            assert [r["tunnel"] for r in simulator.received_by(device)] == [
                f"/bench/{device}/answer"
            ]
