"""The embedded broker's amqtt fixes (pm/broker/amqtt/) through a real broker child and real
MQTT clients; the index, filters and pacers they rely on are unit-tested in
tests/test_broker_amqtt.py (their amqtt internals are pinned by tests/test_private_names.py)."""

from __future__ import annotations

import trio

from pm.broker import run_embedded_broker
from pm.config import BrokerConfig
from pm.mqtt import open_mqtt_client
from tests.waiting import poll_until


async def test_a_connecting_client_gets_no_retained_message_of_other_filters() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            broker = await nursery.start(run_embedded_broker, BrokerConfig(port=0))
            seen_by_a: list[str] = []
            seen_by_b: list[str] = []
            async with (
                open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="a",
                    on_message=lambda t, p: seen_by_a.append(t),
                ) as device_a,
                open_mqtt_client(
                    broker.host, broker.port, client_id="gw", on_message=lambda t, p: None
                ) as gateway,
            ):
                await device_a.subscribe("/remote/a")
                assert gateway.publish("/remote/a", b'{"id": 1}', retain=True)
                await poll_until(lambda: bool(seen_by_a))
                # A newcomer subscribed to its own topic only: amqtt 0.12.1 would also hand it
                # the retained request of device a (its connect-time loop over all filters).
                async with open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="b",
                    on_message=lambda t, p: seen_by_b.append(t),
                ) as device_b:
                    await device_b.subscribe("/remote/b")
                    assert gateway.publish("/remote/b", b'{"id": 2}')
                    # A retained copy handed over at connect would have arrived before this.
                    await poll_until(lambda: "/remote/b" in seen_by_b)
                assert seen_by_b == ["/remote/b"]
                # The legitimate path still works: subscribing gets the filter's retained copy.
                async with open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="a2",
                    on_message=lambda t, p: seen_by_b.append(t),
                ) as late_a:
                    await late_a.subscribe("/remote/a")
                    await poll_until(lambda: len(seen_by_b) >= 2)
                assert seen_by_b == ["/remote/b", "/remote/a"]
            nursery.cancel_scope.cancel()


async def test_many_devices_each_get_only_their_own_requests_through_the_index() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            broker = await nursery.start(run_embedded_broker, BrokerConfig(port=0))
            seen: dict[str, list[bytes]] = {}
            async with (
                open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="mux",
                    on_message=lambda t, p: seen.setdefault(t, []).append(p),
                ) as devices,
                open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="gw",
                    on_message=lambda t, p: seen.setdefault("gw:" + t, []).append(p),
                ) as gateway,
            ):
                for n in range(50):
                    await devices.subscribe(f"/remote/d{n}")
                await gateway.subscribe("/remote/+/response")
                for n in range(50):
                    assert gateway.publish(f"/remote/d{n}", str(n).encode())
                    assert devices.publish(f"/remote/d{n}/response", str(n).encode())
                await poll_until(lambda: len(seen) == 100)
                # Each client's last message: a duplicate or a misrouted copy of the ones
                # before would have reached its subscriber ahead of it.
                assert gateway.publish("/remote/d0", b"last")
                assert devices.publish("/remote/d0/response", b"last")
                await poll_until(
                    lambda: seen["/remote/d0"][-1] == seen["gw:/remote/d0/response"][-1] == b"last"
                )
            assert seen["/remote/d0"].pop() == seen["gw:/remote/d0/response"].pop() == b"last"
            assert len(seen) == 100
            assert all(seen[f"/remote/d{n}"] == [str(n).encode()] for n in range(50))
            assert all(seen[f"gw:/remote/d{n}/response"] == [str(n).encode()] for n in range(50))
            nursery.cancel_scope.cancel()
