"""Our amqtt broker's writes (fix 11, pm/broker/amqtt/_writes.py): the packets a connection is
sent in one turn of the broker's event loop leave in one write, in order. The broker runs in
this process on real sockets; the clients speak MQTT byte by byte
(tests/integration/mqtt_packets.py) and the writes are counted on the broker's own transports."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.integration.mqtt_packets import (
    puback_packet,
    publish_qos1_packet,
    read_packet,
    subscriber_and_publisher,
)

GUARD_SECONDS = 30.0
PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"


@contextmanager
def transport_writes_to_peers(broker_port: int) -> Iterator[collections.Counter[int]]:
    """Counts the writes the broker's socket transports are given, by the peer's port (the
    broker's side of a connection is the one whose own port is the listener's)."""
    transport_class: Any = asyncio.selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
    original = transport_class.write
    writes: collections.Counter[int] = collections.Counter()

    def counting_write(transport: Any, data: Any) -> None:  # noqa: ANN401 - asyncio's own types
        if transport.get_extra_info("sockname")[1] == broker_port:
            writes[transport.get_extra_info("peername")[1]] += 1
        original(transport, data)

    transport_class.write = counting_write
    try:
        yield writes
    finally:
        transport_class.write = original


def test_a_burst_is_acknowledged_and_delivered_in_few_writes_and_in_order() -> None:
    """A client writes 200 QoS 1 PUBLISHes at once; the broker reads them in one go. amqtt
    wrote each PUBACK with its own ``send`` (200), and routed the messages one at a time, so
    each delivery to the subscriber was written on its own too (200). Now the PUBACKs of one
    turn share a write (fix 11) and the burst is routed at once (fix 12), so its deliveries
    do too; every PUBACK and every delivery arrives whole, in the order of the PUBLISHes."""
    publisher_writes, subscriber_writes = asyncio.run(
        asyncio.wait_for(_relay_burst(200, b""), GUARD_SECONDS)
    )
    assert publisher_writes <= 10, publisher_writes
    assert subscriber_writes <= 10, subscriber_writes


def test_a_burst_larger_than_the_flush_threshold_arrives_whole_and_in_order() -> None:
    """200 deliveries of 2 KiB each (400 KiB for one connection in one turn): the buffer goes
    to the transport each time it reaches FLUSH_AT_BYTES instead of growing, and the stream
    the subscriber reads is still every packet whole, in order."""
    from pm.broker.amqtt._writes import FLUSH_AT_BYTES

    padding = b"x" * 2048
    _, subscriber_writes = asyncio.run(asyncio.wait_for(_relay_burst(200, padding), GUARD_SECONDS))
    assert subscriber_writes >= 200 * len(padding) // FLUSH_AT_BYTES, subscriber_writes


async def _relay_burst(messages: int, padding: bytes) -> tuple[int, int]:
    """Relays ``messages`` QoS 1 messages (their payloads end with ``padding``) from a
    publisher to a subscriber (which acknowledges each as it reads it); returns the broker's
    writes to the publisher and to the subscriber during the burst, after checking what both
    received."""
    from pm.broker.amqtt._broker import PuppetmasterBroker
    from pm.broker.amqtt._config import amqtt_config, bound_endpoint

    broker = PuppetmasterBroker(amqtt_config("127.0.0.1", 0))
    broker.plugins_manager._is_topic_filtering_enabled = False
    await broker.start()
    try:
        host, port = bound_endpoint(broker)
        subscriber, publisher = await subscriber_and_publisher(host, port, "burst/+")
        burst = b"".join(
            publish_qos1_packet(f"burst/{n}", n, b'{"id":%d}' % n + padding)
            for n in range(1, messages + 1)
        )
        with transport_writes_to_peers(port) as writes:
            publisher[1].write(burst)
            payloads = []
            for _ in range(messages):
                packet = await read_packet(subscriber[0])
                assert packet[0] & 0xF6 == 0x32, packet  # PUBLISH, QoS 1
                packet_id, payload = _qos1_publish_contents(packet)
                payloads.append(payload)
                subscriber[1].write(puback_packet(packet_id))
            acknowledged = [await read_packet(publisher[0]) for _ in range(messages)]
            # The subscriber's PUBACKs are all read once its PINGREQ is answered (in order).
            subscriber[1].write(PINGREQ)
            assert await read_packet(subscriber[0]) == PINGRESP
        assert payloads == [b'{"id":%d}' % n + padding for n in range(1, messages + 1)]
        assert acknowledged == [puback_packet(n) for n in range(1, messages + 1)]
        ports = [writer.get_extra_info("sockname")[1] for _, writer in (publisher, subscriber)]
        for _, writer in (subscriber, publisher):
            writer.close()
        return writes[ports[0]], writes[ports[1]] - 1  # the PINGRESP is not the burst's
    finally:
        await broker.shutdown()


def test_closing_sends_the_pending_bytes_first_and_later_writes_are_dropped() -> None:
    """A refused client is written its CONNACK and closed in the same turn: the pending bytes
    must go before the EOF. After the close, writes (a delivery racing the disconnect) are
    dropped, and a flush of a connection asyncio already shut for writing does not raise
    (it runs in the callback that flushes every connection)."""
    received = asyncio.run(asyncio.wait_for(_write_then_close(), GUARD_SECONDS))
    assert received == b"first second"


async def _write_then_close() -> bytes:
    from pm.broker.amqtt._writes import CoalescingStreamWriter, WriteCoalescer

    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, client = await asyncio.open_connection("127.0.0.1", port)
        stream = await accepted.get()
        writer = CoalescingStreamWriter(stream, WriteCoalescer())
        writer.write(b"first ")
        writer.write(b"second")
        await writer.close()
        writer.write(b" after")
        writer.flush()
        received = await reader.read()  # to EOF
        late = CoalescingStreamWriter(stream, WriteCoalescer())
        late.write(b"after write_eof")
        late.flush()
        client.close()
        return received
    finally:
        server.close()


def _qos1_publish_contents(packet: bytes) -> tuple[int, bytes]:
    """A QoS 1 PUBLISH's packet id and payload (its remaining length may take several bytes)."""
    start = 2
    while packet[start - 1] & 0x80:
        start += 1
    topic_length = int.from_bytes(packet[start : start + 2], "big")
    variable = start + 2 + topic_length
    return int.from_bytes(packet[variable : variable + 2], "big"), packet[variable + 2 :]
