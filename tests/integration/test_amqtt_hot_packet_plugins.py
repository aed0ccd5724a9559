"""Our amqtt broker's hot packets (fix 13) decline while a plugin listens: amqtt's path fires
the packet events (``PACKET_RECEIVED``/``PACKET_SENT``, pm/broker/amqtt/_hot_packets.py) and
the message events (``MESSAGE_RECEIVED``, pm/broker/amqtt/_routing.py) that the hot path does
not, so a plugin registered for them still sees every packet and message. The broker runs in
this process on real sockets; the clients speak MQTT byte by byte
(tests/integration/mqtt_packets.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.integration.mqtt_packets import (
    puback_packet,
    publish_qos1_packet,
    read_packet,
    subscriber_and_publisher,
)
from tests.integration.test_amqtt_hot_packets import receive, running_broker

GUARD_SECONDS = 30.0
MESSAGES = 5


async def _publish(host: str, port: int) -> list[tuple[str, bytes]]:
    """``MESSAGES`` QoS 1 messages from one client to another; what the subscriber got."""
    subscriber, publisher = await subscriber_and_publisher(host, port, "plugged/#")
    for n in range(MESSAGES):
        publisher[1].write(publish_qos1_packet(f"plugged/{n}", n + 1, b"%d" % n))
    for n in range(MESSAGES):
        assert await read_packet(publisher[0]) == puback_packet(n + 1)
    received = await receive(subscriber, MESSAGES)
    for _, writer in (subscriber, publisher):
        writer.close()
    return received


def test_a_plugin_listening_to_message_events_sees_every_message() -> None:
    """Routed where it is read, a message skips amqtt's MESSAGE_RECEIVED event."""
    asyncio.run(asyncio.wait_for(_message_events(), GUARD_SECONDS))


async def _message_events() -> None:
    from amqtt.events import BrokerEvents

    seen: list[tuple[str, bytes]] = []

    async def on_message_received(*, client_id: str, message: Any) -> None:  # noqa: ANN401
        seen.append((message.topic, bytes(message.data)))

    callbacks = {BrokerEvents.MESSAGE_RECEIVED: on_message_received}
    async with running_broker(callbacks=callbacks) as (broker, host, port):
        received = await _publish(host, port)
        await broker.plugins_manager.wait_fired_events()
    expected = [(f"plugged/{n}", b"%d" % n) for n in range(MESSAGES)]
    assert sorted(received) == expected
    assert sorted(seen) == expected


def test_a_plugin_listening_to_packet_events_sees_every_publish_and_puback() -> None:
    """Taken where they are read, a PUBLISH skips amqtt's PACKET_RECEIVED event and its
    PUBACK the PACKET_SENT one."""
    asyncio.run(asyncio.wait_for(_packet_events(), GUARD_SECONDS))


async def _packet_events() -> None:
    from amqtt.events import MQTTEvents
    from amqtt.mqtt.puback import PubackPacket
    from amqtt.mqtt.publish import PublishPacket

    published: list[str] = []
    acknowledged: list[int] = []

    async def on_packet_received(*, packet: Any, session: Any) -> None:  # noqa: ANN401
        if isinstance(packet, PublishPacket) and session.client_id == "pub":
            published.append(packet.topic_name)

    async def on_packet_sent(*, packet: Any, session: Any) -> None:  # noqa: ANN401
        if isinstance(packet, PubackPacket) and session.client_id == "pub":
            acknowledged.append(packet.packet_id)

    callbacks = {
        MQTTEvents.PACKET_RECEIVED: on_packet_received,
        MQTTEvents.PACKET_SENT: on_packet_sent,
    }
    async with running_broker(callbacks=callbacks) as (broker, host, port):
        await _publish(host, port)
        await broker.plugins_manager.wait_fired_events()
    assert sorted(published) == [f"plugged/{n}" for n in range(MESSAGES)]
    assert sorted(acknowledged) == [n + 1 for n in range(MESSAGES)]
