"""An adversarial review of our amqtt broker's hot packets (fix 13, pm/broker/amqtt/_incoming.py
and _hot_packets.py): what amqtt's own path did for a client's PUBLISH and PUBACK, checked on
the new one. Random cut points (seeded) interleaved with SUBSCRIBE, UNSUBSCRIBE and PINGREQ,
DUP re-sends and reused packet ids, a persistent session's messages queued while it is offline,
will messages, a client that disconnects mid-burst, empty payloads, a remaining length of four
bytes, ``$`` topics and the keepalive. The broker runs in this process on real sockets; the
clients speak MQTT byte by byte (tests/integration/mqtt_packets.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.integration.mqtt_packets import (
    Stream,
    connect_packet,
    mqtt_string,
    puback_packet,
    publish_qos0_packet,
    publish_qos1_packet,
    read_packet,
    remaining_length,
    subscribe_packet,
    subscriber_and_publisher,
)
from tests.integration.test_amqtt_hot_packets import (
    connected_client,
    reads_by_the_broker,
    receive,
    running_broker,
)

GUARD_SECONDS = 30.0
PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"
DISCONNECT = b"\xe0\x00"


@asynccontextmanager
async def broker_and_endpoint() -> AsyncIterator[tuple[Any, str, int]]:
    """The broker as the gateway runs it without ``broker.auth`` (the gateway's identity
    reserved, every other client accepted and not anonymous: a persistent session keeps its
    messages), and its object."""
    identity = {"gateway_username": "gateway", "gateway_client_id": "gateway"}
    async with running_broker(auth=identity) as started:
        yield started


def unsubscribe_packet(topic_filter: str, packet_id: int) -> bytes:
    body = packet_id.to_bytes(2, "big") + mqtt_string(topic_filter)
    return b"\xa2" + remaining_length(len(body)) + body


def with_dup(packet: bytes) -> bytes:
    return bytes([packet[0] | 0x08]) + packet[1:]


def retained(packet: bytes) -> bytes:
    return bytes([packet[0] | 0x01]) + packet[1:]


def connect_with_will(client_id: str, will_topic: str, will_message: bytes) -> bytes:
    """A clean-session CONNECT with a QoS 1 will."""
    flags = 0x02 | 0x04 | 0x08  # clean session, will flag, will QoS 1
    payload = mqtt_string(client_id) + mqtt_string(will_topic)
    payload += len(will_message).to_bytes(2, "big") + will_message
    body = mqtt_string("MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big") + payload
    return b"\x10" + remaining_length(len(body)) + body


async def write_read_apart(publisher: Stream, stream: bytes, cuts: list[int]) -> None:
    """``stream`` written in pieces cut at ``cuts``, each piece read by the broker before the
    next is written (so every cut is a read boundary)."""
    with reads_by_the_broker() as chunks:
        start = 0
        for cut in [*cuts, len(stream)]:
            publisher[1].write(stream[start:cut])
            read = 0
            while read < cut - start:
                read += len(await chunks.get())
            start = cut


# -- many packets per read, one packet over many reads, control packets among them ------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_random_stream_cut_at_random_points_is_handled_as_amqtt_did(seed: int) -> None:
    """A client's stream of QoS 0/1 PUBLISHes (packet ids reused, DUP re-sends), SUBSCRIBE,
    UNSUBSCRIBE and PINGREQ, written in pieces cut at seeded random points (inside headers,
    topics, payloads, and many packets in one piece). Every message reaches the subscriber
    whole, once per PUBLISH (a DUP re-send at QoS 1 is a new delivery, as in amqtt), in
    order; every QoS 1 PUBLISH gets its PUBACK in order; every SUBSCRIBE, UNSUBSCRIBE and
    PINGREQ its answer."""
    asyncio.run(asyncio.wait_for(_random_stream(seed), GUARD_SECONDS))


async def _random_stream(seed: int) -> None:
    chooser = random.Random(seed)
    packets: list[bytes] = []
    expected_messages: list[tuple[str, bytes]] = []
    expected_pubacks: list[int] = []
    answers = {9: 0, 11: 0, 13: 0}  # SUBACK, UNSUBACK, PINGRESP
    for n in range(120):
        kind = chooser.choice("0011111dspu")
        topic = f"fz/{chooser.randrange(4)}" + "/x" * chooser.randrange(3)
        payload = b"%d:" % n + bytes(chooser.randrange(256) for _ in range(chooser.randrange(300)))
        packet_id = chooser.randrange(1, 6)  # ids reused while earlier ones are acknowledged
        if kind == "0":
            packets.append(publish_qos0_packet(topic, payload))
        elif kind in "1d":
            packet = publish_qos1_packet(topic, packet_id, payload)
            packets.append(with_dup(packet) if kind == "d" else packet)
            expected_pubacks.append(packet_id)
        elif kind == "s":
            packets.append(subscribe_packet("own/echo", 100 + n, qos=1))
            answers[9] += 1
            continue
        elif kind == "u":
            packets.append(unsubscribe_packet("own/echo", 100 + n))
            answers[11] += 1
            continue
        else:
            packets.append(PINGREQ)
            answers[13] += 1
            continue
        expected_messages.append((topic, payload))
    stream = b"".join(packets)
    cuts = sorted(chooser.sample(range(1, len(stream)), 60))
    async with broker_and_endpoint() as (_broker, host, port):
        subscriber, publisher = await subscriber_and_publisher(host, port, "fz/#")
        await write_read_apart(publisher, stream, cuts)
        assert await receive(subscriber, len(expected_messages)) == expected_messages
        pubacks: list[int] = []
        seen = {9: 0, 11: 0, 13: 0}
        while len(pubacks) < len(expected_pubacks) or seen != answers:
            packet = await read_packet(publisher[0])
            if packet[0] >> 4 == 4:
                pubacks.append(int.from_bytes(packet[2:4], "big"))
            else:
                seen[packet[0] >> 4] += 1
        assert pubacks == expected_pubacks
        # Nothing more: a PINGREQ's answer is the next packet on both connections.
        for stream_ in (subscriber, publisher):
            stream_[1].write(PINGREQ)
            assert await read_packet(stream_[0]) == PINGRESP
            stream_[1].close()


# -- DUP, packet ids, empty payloads, $ topics ---------------------------------------------


def test_dup_resends_reused_ids_and_empty_payloads_are_delivered_as_amqtt_did() -> None:
    """A QoS 1 PUBLISH re-sent with DUP is acknowledged and delivered again (amqtt keeps no
    record of received ids at QoS 1); a packet id is reused after its PUBACK; a QoS 0 PUBLISH
    with DUP set is dropped ([MQTT-3.3.1-2], amqtt warns) and the next one delivered; a
    PUBLISH with an empty payload, at QoS 0 and 1, is delivered empty."""
    asyncio.run(asyncio.wait_for(_dup_ids_and_empty(), GUARD_SECONDS))


async def _dup_ids_and_empty() -> None:
    async with broker_and_endpoint() as (_broker, host, port):
        subscriber, publisher = await subscriber_and_publisher(host, port, "d/#")
        first = publish_qos1_packet("d/1", 5, b"once")
        publisher[1].write(first + with_dup(first))
        assert [await read_packet(publisher[0]) for _ in range(2)] == [puback_packet(5)] * 2
        publisher[1].write(
            publish_qos1_packet("d/2", 5, b"id reused")
            + with_dup(publish_qos0_packet("d/3", b"dropped"))
            + publish_qos0_packet("d/4", b"")
            + publish_qos1_packet("d/5", 6, b"")
        )
        assert [await read_packet(publisher[0]) for _ in range(2)] == [
            puback_packet(5),
            puback_packet(6),
        ]
        assert await receive(subscriber, 5) == [
            ("d/1", b"once"),
            ("d/1", b"once"),
            ("d/2", b"id reused"),
            ("d/4", b""),
            ("d/5", b""),
        ]
        subscriber[1].write(PINGREQ)
        assert await read_packet(subscriber[0]) == PINGRESP  # the dropped one never came
        for _, writer in (subscriber, publisher):
            writer.close()


def test_a_publish_to_a_dollar_topic_is_refused_as_amqtt_refused_it() -> None:
    """[MQTT-4.7.2-1]: a client may not publish to a topic starting with ``$``; amqtt's
    message loop refuses it. Taken where it is read, it must not be routed: a subscriber to
    ``$SYS/#`` gets only what the broker itself publishes there, not the client's."""
    asyncio.run(asyncio.wait_for(_dollar_topic(), GUARD_SECONDS))


async def _dollar_topic() -> None:
    async with broker_and_endpoint() as (_broker, host, port):
        subscriber, publisher = await subscriber_and_publisher(host, port, "$SYS/fake/#")
        subscriber[1].write(subscribe_packet("marker", 2, qos=1))
        assert (await read_packet(subscriber[0]))[:1] == b"\x90"
        refused = publish_qos0_packet("$SYS/fake/a", b"no") + publish_qos1_packet(
            "$SYS/fake/b", 1, b"no"
        )
        other = await connected_client(host, port, "other")
        # Read (and, had they been routed, queued for routing) before the marker is written.
        await write_read_apart(publisher, refused, [])
        other[1].write(publish_qos1_packet("marker", 1, b"after"))
        assert await read_packet(other[0]) == puback_packet(1)
        assert await receive(subscriber, 1) == [("marker", b"after")]
        for _, writer in (subscriber, publisher, other):
            writer.close()


# -- sessions: offline persistent subscriber, will, disconnect mid-burst -----------------------


def test_qos1_messages_for_an_offline_persistent_session_arrive_on_reconnect_in_order() -> None:
    """A subscriber with clean_session false disconnects; 30 QoS 1 messages published hot
    meanwhile (several per read) are kept for its session and delivered, in order, when it
    connects again."""
    asyncio.run(asyncio.wait_for(_offline_session(), GUARD_SECONDS))


async def _offline_session() -> None:
    async with broker_and_endpoint() as (broker, host, port):
        subscriber = await asyncio.open_connection(host, port)
        subscriber[1].write(connect_packet("keeper", clean=False))
        assert (await read_packet(subscriber[0]))[:1] == b"\x20"
        subscriber[1].write(subscribe_packet("off/#", 1, qos=1))
        assert (await read_packet(subscriber[0]))[:1] == b"\x90"
        subscriber[1].write(DISCONNECT)
        assert await subscriber[0].read() == b""  # the broker closed it
        subscriber[1].close()
        session = broker._sessions["keeper"][0]
        while session.transitions.state != "disconnected":  # noqa: ASYNC110 - amqtt has no event
            await asyncio.sleep(0.01)
        publisher = await connected_client(host, port, "pub")
        messages = [(f"off/{n % 3}", b"m%d" % n) for n in range(30)]
        for start in range(0, 30, 5):
            publisher[1].write(
                b"".join(
                    publish_qos1_packet(topic, n + 1, payload)
                    for n, (topic, payload) in enumerate(messages[start : start + 5], start)
                )
            )
        for n in range(30):
            assert await read_packet(publisher[0]) == puback_packet(n + 1)
        while session.retained_messages.qsize() < 30:  # noqa: ASYNC110 - amqtt has no event
            await asyncio.sleep(0.01)
        back = await asyncio.open_connection(host, port)
        back[1].write(connect_packet("keeper", clean=False))
        assert (await read_packet(back[0]))[:1] == b"\x20"
        assert await receive(back, 30) == messages
        for _, writer in (back, publisher):
            writer.close()


def test_a_client_lost_mid_burst_has_every_whole_message_routed_then_its_will() -> None:
    """A client with a will writes 200 QoS 1 PUBLISHes and half of another, then its
    connection is lost (reset). Every whole message is delivered, once, in order; the half
    one is not; then the will."""
    asyncio.run(asyncio.wait_for(_lost_mid_burst(), GUARD_SECONDS))


async def _lost_mid_burst() -> None:
    async with broker_and_endpoint() as (_broker, host, port):
        subscriber = await connected_client(host, port, "sub")
        subscriber[1].write(subscribe_packet("burst/#", 1, qos=1))
        assert (await read_packet(subscriber[0]))[:1] == b"\x90"
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(connect_with_will("lost", "burst/will", b"gone"))
        assert (await read_packet(reader))[:1] == b"\x20"
        messages = [(f"burst/{n % 7}", b"b%d" % n) for n in range(200)]
        burst = b"".join(
            publish_qos1_packet(topic, n % 50 + 1, payload)
            for n, (topic, payload) in enumerate(messages)
        )
        half = publish_qos1_packet("burst/half", 99, b"h" * 100)[:60]
        with reads_by_the_broker() as chunks:
            writer.write(burst + half)
            read = 0
            while read < len(burst) + len(half):
                read += len(await chunks.get())
        writer.transport.abort()
        assert await receive(subscriber, 201) == [*messages, ("burst/will", b"gone")]
        subscriber[1].write(PINGREQ)
        assert await read_packet(subscriber[0]) == PINGRESP
        subscriber[1].close()


# -- sizes and the keepalive ---------------------------------------------------------------


def test_a_message_with_a_four_byte_remaining_length_is_delivered_whole() -> None:
    """A 2.1 MiB payload needs a remaining length of four bytes (over 2,097,151): it is read
    across many reads, delivered whole, acknowledged, and the small message written right
    behind it in the same write follows it."""
    asyncio.run(asyncio.wait_for(_four_byte_length(), GUARD_SECONDS))


async def _four_byte_length() -> None:
    async with broker_and_endpoint() as (_broker, host, port):
        subscriber, publisher = await subscriber_and_publisher(host, port, "big/#")
        big = bytes(range(256)) * (2_200_000 // 256)
        packet = publish_qos1_packet("big/1", 1, big)
        assert all(byte & 0x80 for byte in packet[1:4]) and packet[4] < 0x80  # four bytes
        publisher[1].write(packet + publish_qos0_packet("big/2", b"small"))
        assert await read_packet(publisher[0]) == puback_packet(1)
        assert await receive(subscriber, 2) == [("big/1", big), ("big/2", b"small")]
        for _, writer in (subscriber, publisher):
            writer.close()


def test_clients_that_only_publish_or_only_acknowledge_are_not_dropped_by_the_keepalive() -> None:
    """Two clients with a keepalive of 1 s for 2.4 s (past the 1.5 s the broker allows a
    silent client): one sends nothing but QoS 0 PUBLISHes, every 0.2 s; the other, subscribed
    at QoS 1, nothing but the PUBACKs of their deliveries. Both stay connected: each hot
    packet counts as a packet read. Over 2 s because a keepalive is whole seconds."""
    asyncio.run(asyncio.wait_for(_only_hot_packets(), GUARD_SECONDS))


async def _only_hot_packets() -> None:
    async with broker_and_endpoint() as (_broker, host, port):
        acker = await asyncio.open_connection(host, port)
        acker[1].write(connect_packet("acker", keepalive=1))
        assert (await read_packet(acker[0]))[:1] == b"\x20"
        acker[1].write(subscribe_packet("alive/#", 1, qos=1))
        assert (await read_packet(acker[0]))[:1] == b"\x90"
        talker = await asyncio.open_connection(host, port)
        talker[1].write(connect_packet("talker", keepalive=1))
        assert (await read_packet(talker[0]))[:1] == b"\x20"
        for n in range(12):
            talker[1].write(publish_qos0_packet("alive/t", b"%d" % n))
            # Delivered at the subscription's QoS 1 (amqtt's choice); acknowledged at once.
            assert await receive(acker, 1) == [("alive/t", b"%d" % n)]
            await asyncio.sleep(0.2)
        for client in (talker, acker):
            client[1].write(PINGREQ)
            assert await read_packet(client[0]) == PINGRESP
            client[1].close()


def test_a_publish_behind_an_unsubscribe_of_the_same_write_is_not_delivered_to_it() -> None:
    """The converse of test_amqtt_hot_packets' SUBSCRIBE case: a client unsubscribes from a
    topic and publishes on it in one write (and the same in pieces read apart). amqtt's
    message loop takes the unsubscription before the message, so the client does not get its
    own message back; a subscriber of another connection does."""
    asyncio.run(asyncio.wait_for(_unsubscribe_then_publish(), GUARD_SECONDS))


async def _unsubscribe_then_publish() -> None:
    async with broker_and_endpoint() as (_broker, host, port):
        subscriber, _publisher = await subscriber_and_publisher(host, port, "echo/#")
        reader, writer = await connected_client(host, port, "echo")
        for round_ in range(2):
            writer.write(subscribe_packet("echo/topic", 1, qos=1))
            assert (await read_packet(reader))[:1] == b"\x90"
            stream = unsubscribe_packet("echo/topic", 2) + publish_qos1_packet(
                "echo/topic", 3, b"%d" % round_
            )
            await write_read_apart((reader, writer), stream, [] if round_ == 0 else [5, 14])
            writer.write(PINGREQ)
            packets = [await read_packet(reader) for _ in range(3)]
            assert sorted(packet[0] >> 4 for packet in packets) == [4, 11, 13], packets
            assert await receive(subscriber, 1) == [("echo/topic", b"%d" % round_)]
        writer.close()
        for _, writer_ in (subscriber, _publisher):
            writer_.close()


# -- hostile bytes: malformed packets behind a whole one ---------------------------------------

TOPIC_LONGER_THAN_ITS_PACKET = b"\x32\x05\x00\x40d/x\x00"  # QoS 1, topic length 64 in 5 bytes
FIVE_BYTE_REMAINING_LENGTH = b"\x30\xff\xff\xff\xff\x7f"  # [MQTT-2.2.3]: at most four bytes


@pytest.mark.parametrize(
    "malformed",
    [TOPIC_LONGER_THAN_ITS_PACKET, FIVE_BYTE_REMAINING_LENGTH],
    ids=["topic-longer-than-packet", "five-byte-remaining-length"],
)
def test_a_malformed_packet_behind_a_whole_one_is_not_routed_and_the_broker_goes_on(
    malformed: bytes,
) -> None:
    """Hostile bytes in the same write as a whole QoS 1 PUBLISH: the whole one is delivered
    and acknowledged, nothing of the malformed one reaches a subscriber, and the broker goes
    on serving another client (the hot parser leaves a malformed packet to amqtt's path)."""
    asyncio.run(asyncio.wait_for(_malformed_behind_whole(malformed), GUARD_SECONDS))


async def _malformed_behind_whole(malformed: bytes) -> None:
    async with broker_and_endpoint() as (_broker, host, port):
        subscriber, publisher = await subscriber_and_publisher(host, port, "d/#")
        publisher[1].write(publish_qos1_packet("d/whole", 1, b"kept") + malformed)
        assert await read_packet(publisher[0]) == puback_packet(1)
        other = await connected_client(host, port, "other")
        other[1].write(publish_qos1_packet("d/after", 1, b"after"))
        assert await read_packet(other[0]) == puback_packet(1)
        assert await receive(subscriber, 2) == [("d/whole", b"kept"), ("d/after", b"after")]
        for _, writer in (subscriber, publisher, other):
            writer.close()
