"""Our amqtt broker's hot packets (fix 13, pm/broker/amqtt/_incoming.py and _hot_packets.py):
PUBLISH (QoS 0/1) and PUBACK packets handled where they are read, and a PUBLISH routed there,
keeping what amqtt's path did: QoS 1 acknowledgements, order on a connection, packets cut
across reads, retained messages, refused topics. The broker runs in this process on real
sockets; the clients speak MQTT byte by byte (tests/integration/mqtt_packets.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest

from tests.integration.mqtt_packets import (
    Stream,
    connect_packet,
    puback_packet,
    publish_qos0_packet,
    publish_qos1_packet,
    read_packet,
    subscribe_packet,
    subscriber_and_publisher,
)

GUARD_SECONDS = 30.0
PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"


@asynccontextmanager
async def running_broker(
    *, auth: dict[str, str] | None = None, callbacks: dict[str, Any] | None = None
) -> AsyncIterator[tuple[Any, str, int]]:
    """Our broker in this process on a free port, topic filtering off; ``auth`` as the gateway
    passes it (None: anonymous clients accepted), ``callbacks`` (event -> coroutine function)
    registered as a plugin's ``on_<event>`` methods are. Yields it, its host and port."""
    from pm.broker.amqtt._broker import PuppetmasterBroker
    from pm.broker.amqtt._config import amqtt_config, bound_endpoint

    broker = PuppetmasterBroker(amqtt_config("127.0.0.1", 0, auth=auth))
    broker.plugins_manager._is_topic_filtering_enabled = False
    for event, callback in (callbacks or {}).items():
        broker.plugins_manager._event_plugin_callbacks[event].append(callback)
    await broker.start()
    try:
        host, port = bound_endpoint(broker)
        yield broker, host, port
    finally:
        await broker.shutdown()


async def connected_client(host: str, port: int, client_id: str) -> Stream:
    stream = await asyncio.open_connection(host, port)
    stream[1].write(connect_packet(client_id))
    assert (await read_packet(stream[0]))[:1] == b"\x20"  # CONNACK
    return stream


def publish_contents(packet: bytes) -> tuple[str, int | None, bytes, int]:
    """A PUBLISH's topic, packet id (None at QoS 0), payload and fixed-header flags."""
    start = 2
    while packet[start - 1] & 0x80:
        start += 1
    topic_end = start + 2 + int.from_bytes(packet[start : start + 2], "big")
    topic = packet[start + 2 : topic_end].decode()
    if packet[0] & 0x06:
        return (
            topic,
            int.from_bytes(packet[topic_end : topic_end + 2], "big"),
            packet[topic_end + 2 :],
            packet[0] & 0x0F,
        )
    return topic, None, packet[topic_end:], packet[0] & 0x0F


async def receive(subscriber: Stream, count: int) -> list[tuple[str, bytes]]:
    """``count`` deliveries, each QoS 1 one acknowledged as it is read; (topic, payload)."""
    received = []
    for _ in range(count):
        packet = await read_packet(subscriber[0])
        assert packet[0] >> 4 == 3, packet
        topic, packet_id, payload, _flags = publish_contents(packet)
        if packet_id is not None:
            subscriber[1].write(puback_packet(packet_id))
        received.append((topic, payload))
    return received


@contextmanager
def tasks_created() -> Iterator[list[int]]:
    """Counts the tasks created on the running loop (``asyncio.create_task`` and
    ``ensure_future`` both go through ``loop.create_task``)."""
    loop = asyncio.get_running_loop()
    original = loop.create_task
    count = [0]

    def counting(coro: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - asyncio's own types
        count[0] += 1
        return original(coro, **kwargs)

    loop.create_task = counting  # type: ignore[method-assign]
    try:
        yield count
    finally:
        loop.create_task = original  # type: ignore[method-assign]


def test_messages_of_many_connections_are_routed_without_a_task_each_on_the_way_in() -> None:
    """The per-device shape: 100 clients publish one QoS 1 message each, every one its own
    read. amqtt started a task per PUBLISH (``handle_publish``) and one per message its
    connection's message loop took (``mqtt_deliver_next_message``), after waking the
    connection's reader task for the read; what is left is the delivery to the subscriber
    (amqtt's ``mqtt_publish``, a task each) and the routing step. Every publisher still gets
    its PUBACK and the subscriber every message."""
    asyncio.run(asyncio.wait_for(_publish_from_many_connections(100), GUARD_SECONDS))


async def _publish_from_many_connections(clients: int) -> None:
    async with running_broker() as (_broker, host, port):
        subscriber = await connected_client(host, port, "sub")
        subscriber[1].write(subscribe_packet("device/+/answer", 1, qos=1))
        assert (await read_packet(subscriber[0]))[:1] == b"\x90"  # SUBACK
        publishers = [await connected_client(host, port, f"device-{n}") for n in range(clients)]
        with tasks_created() as tasks:
            for n, (_, writer) in enumerate(publishers):
                writer.write(publish_qos1_packet(f"device/{n}/answer", 7, b"%d" % n))
            for reader, _ in publishers:
                assert await read_packet(reader) == puback_packet(7)
            received = await receive(subscriber, clients)
            subscriber[1].write(PINGREQ)
            assert await read_packet(subscriber[0]) == PINGRESP
        assert sorted(received) == sorted((f"device/{n}/answer", b"%d" % n) for n in range(clients))
        # amqtt's path: ~3.5 per message here (the PUBLISH, the message loop's take, the
        # delivery, a share of the routing steps and the PINGREQ); ours ~1.5.
        assert tasks[0] <= clients * 2, tasks[0]
        for _, writer in (subscriber, *publishers):
            writer.close()


@contextmanager
def reads_by_the_broker() -> Iterator[asyncio.Queue[bytes]]:
    """Every chunk of bytes the broker's connections receive, as they receive it."""
    from pm.broker.amqtt._incoming import ConnectionProtocol

    original = ConnectionProtocol.data_received
    chunks: asyncio.Queue[bytes] = asyncio.Queue()

    def recording(protocol: ConnectionProtocol, data: bytes) -> None:
        chunks.put_nowait(bytes(data))
        original(protocol, data)

    ConnectionProtocol.data_received = recording  # type: ignore[method-assign]
    try:
        yield chunks
    finally:
        ConnectionProtocol.data_received = original  # type: ignore[method-assign]


def test_packets_cut_across_reads_are_delivered_whole_and_in_order() -> None:
    """A stream of QoS 1 and QoS 0 PUBLISHes written in pieces, each piece read by the broker
    before the next is written: cut inside a two-byte remaining length (once where the rest
    of it reads like a packet of its own), inside a topic, inside a payload, and between
    packets. Every message arrives whole, in order, and every
    QoS 1 one is acknowledged in order."""
    asyncio.run(asyncio.wait_for(_publish_in_pieces(), GUARD_SECONDS))


async def _publish_in_pieces() -> None:
    async with running_broker() as (_broker, host, port):
        subscriber, publisher = await subscriber_and_publisher(host, port, "cut/#")
        long_payload = b"L" * 300  # a remaining length of two bytes
        # A remaining length whose second byte reads as a PUBACK's first (0x40: 8,192-8,319)
        # followed by a topic length of 0x0203: read from that byte as if a packet started
        # there, it is a PUBACK (0x40 0x02 ...) and the stream is lost.
        long_topic = "cut/" + "t" * (0x0203 - 4)
        tricky_payload = b"T" * (8200 - 2 - 0x0203)
        packets = [
            publish_qos1_packet("cut/a", 1, b"first"),
            publish_qos1_packet("cut/b", 2, long_payload),
            publish_qos0_packet("cut/c", b"third"),
            publish_qos1_packet("cut/d", 3, b"fourth"),
            publish_qos0_packet(long_topic, tricky_payload),
            publish_qos1_packet("cut/e", 4, b"fifth"),
        ]
        stream = b"".join(packets)
        second = len(packets[0])
        tricky = sum(len(packet) for packet in packets[:4])
        cuts = [
            second + 2,  # inside the second packet's remaining length
            second + 6,  # inside its topic
            second + 100,  # inside its payload
            second + len(packets[1]),  # between packets
            tricky + 2,  # after the first byte of a remaining length of two
            len(stream) - 3,  # inside the last packet's payload
        ]
        with reads_by_the_broker() as chunks:
            start = 0
            for cut in [*cuts, len(stream)]:
                publisher[1].write(stream[start:cut])
                read = b""
                while len(read) < cut - start:  # the broker has read this piece
                    read += await chunks.get()
                start = cut
        received = await receive(subscriber, len(packets))
        assert received == [
            ("cut/a", b"first"),
            ("cut/b", long_payload),
            ("cut/c", b"third"),
            ("cut/d", b"fourth"),
            (long_topic, tricky_payload),
            ("cut/e", b"fifth"),
        ]
        assert [await read_packet(publisher[0]) for _ in range(4)] == [
            puback_packet(n) for n in (1, 2, 3, 4)
        ]
        for _, writer in (subscriber, publisher):
            writer.close()


def test_a_message_larger_than_the_read_pause_threshold_is_delivered() -> None:
    """A 300 KiB message: the broker stops reading a connection while more than
    PAUSE_READING_AT bytes wait for its reader, and reads on when the reader needs more than
    that to finish a packet (else neither would move); the next message follows it."""
    asyncio.run(asyncio.wait_for(_publish_a_large_message(300 * 1024), GUARD_SECONDS))


async def _publish_a_large_message(size: int) -> None:
    from pm.broker.amqtt._incoming import PAUSE_READING_AT

    assert size > PAUSE_READING_AT
    async with running_broker() as (_broker, host, port):
        subscriber, publisher = await subscriber_and_publisher(host, port, "large/#")
        large = bytes(range(256)) * (size // 256)
        publisher[1].write(
            publish_qos1_packet("large/1", 1, large) + publish_qos1_packet("large/2", 2, b"next")
        )
        assert await receive(subscriber, 2) == [("large/1", large), ("large/2", b"next")]
        assert [await read_packet(publisher[0]) for _ in range(2)] == [
            puback_packet(1),
            puback_packet(2),
        ]
        for _, writer in (subscriber, publisher):
            writer.close()


def test_a_publish_behind_a_subscribe_of_the_same_write_waits_for_it() -> None:
    """A client subscribes to a topic and publishes on it in one write. amqtt's path handles
    the SUBSCRIBE first (the message loop takes a subscription before a message), so the
    client receives its own message; a message taken at once as it is read would overtake
    the subscription and reach nobody."""
    asyncio.run(asyncio.wait_for(_subscribe_then_publish(), GUARD_SECONDS))


async def _subscribe_then_publish() -> None:
    async with running_broker() as (_broker, host, port):
        reader, writer = await connected_client(host, port, "echo")
        writer.write(
            subscribe_packet("echo/topic", 1, qos=1)
            + publish_qos1_packet("echo/topic", 2, b"to myself")
            + publish_qos0_packet("echo/topic", b"and again")
        )
        packets = [await read_packet(reader) for _ in range(4)]
        kinds = sorted(packet[0] >> 4 for packet in packets)
        assert kinds == [3, 3, 4, 9], packets  # two deliveries, the PUBACK, the SUBACK
        deliveries = [publish_contents(p)[2] for p in packets if p[0] >> 4 == 3]
        assert deliveries == [b"to myself", b"and again"]
        writer.close()


def test_a_retained_message_taken_at_once_is_retained_and_cleared() -> None:
    """A retained QoS 1 PUBLISH routed where it is read is stored as amqtt stores it: a later
    subscriber gets it, retained; an empty retained PUBLISH clears it, so the next gets
    nothing but the next live message."""
    asyncio.run(asyncio.wait_for(_retain_and_clear(), GUARD_SECONDS))


async def _retain_and_clear() -> None:
    async with running_broker() as (_broker, host, port):
        publisher = await connected_client(host, port, "retainer")
        publisher[1].write(b"\x33" + publish_qos1_packet("kept/1", 1, b"online")[1:])
        assert await read_packet(publisher[0]) == puback_packet(1)
        late = await connected_client(host, port, "late")
        late[1].write(subscribe_packet("kept/+", 1, qos=1))
        packets = [await read_packet(late[0]) for _ in range(2)]
        retained = [p for p in packets if p[0] >> 4 == 3]
        assert len(retained) == 1, packets
        topic, _, payload, flags = publish_contents(retained[0])
        assert (topic, payload, flags & 0x01) == ("kept/1", b"online", 1)
        # An empty retained message clears it (MQTT 3.1.1 3.3.1-10).
        publisher[1].write(b"\x33" + publish_qos1_packet("kept/1", 2, b"")[1:])
        assert await read_packet(publisher[0]) == puback_packet(2)
        later = await connected_client(host, port, "later")
        later[1].write(subscribe_packet("kept/+", 1, qos=1))
        assert (await read_packet(later[0]))[:1] == b"\x90"  # SUBACK
        publisher[1].write(publish_qos1_packet("kept/1", 3, b"live"))
        assert await read_packet(publisher[0]) == puback_packet(3)
        # The live message comes next: nothing is retained for the cleared topic (amqtt's
        # retain_message deletes it; an emptied one kept was sent to every later subscriber).
        topic, _, payload, flags = publish_contents(await read_packet(later[0]))
        assert (topic, payload, flags & 0x01) == ("kept/1", b"live", 0)
        for _, writer in (publisher, late, later):
            writer.close()


def test_a_publish_to_a_wildcard_topic_is_left_to_amqtt_and_raises_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """amqtt's parser refuses a PUBLISH to a topic with a wildcard ([MQTT-3.3.2-2]) and its
    reader discards it. The hot packets' parser leaves such a packet to that path: taken
    where it was read, it was routed, and its delivery failed in amqtt's packet class (or,
    routing declined, that class raised inside ``data_received``, which asyncio reports as a
    fatal error of the connection)."""
    caplog.set_level(logging.ERROR)
    asyncio.run(asyncio.wait_for(_publish_to_a_wildcard(), GUARD_SECONDS))
    assert not [record.getMessage() for record in caplog.records]


async def _publish_to_a_wildcard() -> None:
    async with running_broker() as (_broker, host, port):
        subscriber, publisher = await subscriber_and_publisher(host, port, "bad/#")
        refused = publish_qos0_packet("bad/+", b"refused")
        with reads_by_the_broker() as chunks:
            publisher[1].write(refused)
            read = b""
            while len(read) < len(refused):  # the broker has read (and handled) it
                read += await chunks.get()
        # Routed, it would reach the subscriber before a message published after it.
        other = await connected_client(host, port, "other")
        other[1].write(publish_qos1_packet("bad/ok", 1, b"accepted"))
        assert await read_packet(other[0]) == puback_packet(1)
        assert await receive(subscriber, 1) == [("bad/ok", b"accepted")]
        for _, writer in (subscriber, publisher, other):
            writer.close()
