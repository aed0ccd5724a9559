"""The embedded broker's amqtt fixes (pm/_amqtt_broker.py): pinned internals, and behaviour
through a real broker child."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import trio

from pm.broker import run_embedded_broker
from pm.config import BrokerConfig
from pm.mqtt import open_mqtt_client

from .conftest import poll_until


def test_the_amqtt_internals_we_override_are_still_there() -> None:
    # Fails when amqtt moves: then re-read Broker and re-check pm/_amqtt_broker.py.
    from amqtt.broker import Broker

    from pm._amqtt_broker import PuppetmasterBroker

    assert version("amqtt") == "0.12.1"
    overridden = Broker._publish_retained_messages_for_subscription
    assert list(inspect.signature(overridden).parameters) == ["self", "subscription", "session"]
    connect_path = inspect.getsource(Broker._handle_client_session)
    assert "for topic in self._subscriptions:" in connect_path
    assert "self._publish_retained_messages_for_subscription((topic, QOS_0)" in connect_path
    assert "self._subscriptions" in inspect.getsource(Broker.add_subscription)
    assert PuppetmasterBroker._publish_retained_messages_for_subscription is not overridden


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
                    await poll_until(lambda: bool(seen_by_b))
                    await trio.sleep(0.2)
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
