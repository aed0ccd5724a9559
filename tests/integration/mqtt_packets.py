"""MQTT 3.1.1 packets built by hand, for tests that speak to a broker byte by byte (so that no
client library reconnects, pings or retries behind the test's back)."""

from __future__ import annotations

import asyncio


def mqtt_string(value: str) -> bytes:
    """A UTF-8 string with its two-byte length prefix (MQTT 3.1.1, 1.5.3)."""
    encoded = value.encode()
    return len(encoded).to_bytes(2, "big") + encoded


def remaining_length(length: int) -> bytes:
    """The fixed header's variable-length "remaining length" (MQTT 3.1.1, 2.2.3)."""
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def connect_packet(
    client_id: str,
    *,
    keepalive: int = 60,
    clean: bool = True,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """A CONNECT (protocol level 4), with a username and a password when given."""
    flags = 0x02 if clean else 0
    payload = mqtt_string(client_id)
    if username is not None:
        flags |= 0x80
        payload += mqtt_string(username)
    if password is not None:
        flags |= 0x40
        payload += mqtt_string(password)
    body = mqtt_string("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big") + payload
    return b"\x10" + remaining_length(len(body)) + body


def publish_qos0_packet(topic: str, payload: bytes) -> bytes:
    """A QoS 0 PUBLISH (no packet id)."""
    body = mqtt_string(topic) + payload
    return b"\x30" + remaining_length(len(body)) + body


def publish_qos1_packet(topic: str, packet_id: int, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH (the broker answers PUBACK)."""
    body = mqtt_string(topic) + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + remaining_length(len(body)) + body


def subscribe_packet(topic_filter: str, packet_id: int, qos: int) -> bytes:
    """A SUBSCRIBE to one filter (the broker answers SUBACK)."""
    body = packet_id.to_bytes(2, "big") + mqtt_string(topic_filter) + bytes([qos])
    return b"\x82" + remaining_length(len(body)) + body


def puback_packet(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


async def read_packet(reader: asyncio.StreamReader) -> bytes:
    """The next whole MQTT packet from an asyncio stream, fixed header included."""
    packet = await reader.readexactly(1)
    length, multiplier = 0, 1
    while True:
        packet += await reader.readexactly(1)
        length += (packet[-1] & 0x7F) * multiplier
        multiplier *= 128
        if not packet[-1] & 0x80:
            return packet + await reader.readexactly(length)


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def subscriber_and_publisher(
    host: str, port: int, topic_filter: str
) -> tuple[Stream, Stream]:
    """Two connected MQTT clients of a broker: ``sub``, subscribed to ``topic_filter`` at QoS 1,
    and ``pub`` (each CONNACK and the SUBACK checked)."""
    subscriber = await asyncio.open_connection(host, port)
    publisher = await asyncio.open_connection(host, port)
    for (reader, writer), client_id in ((subscriber, "sub"), (publisher, "pub")):
        writer.write(connect_packet(client_id))
        assert (await read_packet(reader))[:1] == b"\x20"  # CONNACK
    subscriber[1].write(subscribe_packet(topic_filter, 1, qos=1))
    assert (await read_packet(subscriber[0]))[:1] == b"\x90"  # SUBACK
    return subscriber, publisher
