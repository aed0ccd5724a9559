"""The hot MQTT 3.1.1 packets coded by pm.mqtt itself (pm/mqtt/_packets.py): what it encodes is
what paho (the reference) reads, what paho encodes it reads the same, and it leaves to paho
every packet it does not take whole."""

from __future__ import annotations

import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion

from pm.mqtt._packets import encode_puback, encode_publish, read_hot_packets
from tests.integration.mqtt_packets import (
    publish_qos0_packet,
    publish_qos1_packet,
    remaining_length,
    subscribe_packet,
)

# Remaining lengths of one to four bytes, at each boundary.
SIZES = [0, 1, 122, 123, 124, 127, 128, 16_379, 16_380, 16_383, 16_384, 2_097_147, 2_097_152]


def _paho_reads(packet: bytes) -> tuple[int, bool, bytes, int, bytes]:
    """(qos, retain, topic, packet id, payload) as paho decodes ``packet``."""
    header, position = packet[0], 1
    while packet[position] & 0x80:  # skip the remaining length
        position += 1
    decoded = _packet.decode_publish(header, packet[position + 1 :], MQTTProtocolVersion.MQTTv311)
    return decoded.qos, decoded.retain, decoded.topic, decoded.mid, decoded.payload


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("qos", "retain"), [(0, False), (1, False), (1, True), (0, True)])
def test_an_encoded_publish_is_what_paho_reads_and_read_back_the_same(
    size: int, qos: int, retain: bool
) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    packet = encode_publish("dév/ice".encode(), payload, 513, qos, retain)
    assert _paho_reads(packet) == (qos, retain, "dév/ice".encode(), 513 if qos else 0, payload)
    taken = [("dév/ice", payload, 513 if qos else 0)]
    assert read_hot_packets(packet, 0) == (taken, len(packet), 0)


def test_packets_built_by_hand_are_read_in_order_from_any_start() -> None:
    stream = b"".join(
        [
            b"junk",
            publish_qos1_packet("/remote/a/response", 1, b'{"id":1}'),
            publish_qos0_packet("/remote/b/status", b"online"),
            encode_puback(65535),
            publish_qos1_packet("/remote/c/response", 258, b"x" * 300),
        ]
    )
    assert read_hot_packets(stream, 4) == (
        [
            ("/remote/a/response", b'{"id":1}', 1),
            ("/remote/b/status", b"online", 0),
            (None, b"", 65535),
            ("/remote/c/response", b"x" * 300, 258),
        ],
        len(stream),
        0,
    )


def test_a_puback_is_the_four_bytes_of_mqtt_3_4() -> None:
    assert encode_puback(1) == b"\x40\x02\x00\x01"
    assert encode_puback(0x1234) == b"\x40\x02\x12\x34"


def _suback() -> bytes:
    return b"\x90\x03\x00\x01\x01"


@pytest.mark.parametrize(
    ("name", "packet", "missing"),
    [
        ("another type", subscribe_packet("a/#", 1, 1), 0),
        ("a SUBACK", _suback(), 0),
        ("QoS 2", b"\x34" + remaining_length(7) + b"\x00\x01a\x00\x05xy", 0),
        ("QoS 3", b"\x36" + remaining_length(7) + b"\x00\x01a\x00\x05xy", 0),
        ("an empty topic", b"\x30\x03\x00\x00x", 0),
        ("a topic longer than the packet", b"\x30\x04\x00\x09ab", 0),
        ("no room for the packet id", b"\x32\x04\x00\x01ab", 0),
        ("packet id 0", publish_qos1_packet("a", 0, b"x"), 0),
        ("a topic not UTF-8", b"\x30\x05\x00\x02\xff\xfex", 0),
        ("a PUBACK of length 3", b"\x40\x03\x00\x01\x00", 0),
        ("a remaining length of five bytes", b"\x30\xff\xff\xff\xff\x01", 0),
        ("a packet cut short", publish_qos1_packet("topic", 7, b"payload")[:-3], 3),
        ("a remaining length cut short", b"\x30\xff\xff", 1),
        ("one byte", b"\x30", 1),
        ("a SUBACK cut short (paho's)", _suback()[:-1], 0),
    ],
)
def test_reading_stops_at_a_packet_it_does_not_take_whole(
    name: str, packet: bytes, missing: int
) -> None:
    taken = publish_qos0_packet("t", b"first")
    assert read_hot_packets(taken + packet, 0) == ([("t", b"first", 0)], len(taken), missing), name


def test_a_stream_cut_anywhere_gives_the_whole_packets_before_the_cut() -> None:
    packets = [
        publish_qos1_packet("/remote/a/response", 9, b"y" * 200),
        encode_puback(3),
        publish_qos0_packet("/remote/b/status", b"offline"),
    ]
    stream = b"".join(packets)
    ends = [sum(map(len, packets[: n + 1])) for n in range(len(packets))]
    for cut in range(len(stream) + 1):
        taken, position, missing = read_hot_packets(stream[:cut], 0)
        whole = [end for end in ends if end <= cut]
        assert len(taken) == len(whole)
        assert position == (whole[-1] if whole else 0)
        assert (missing > 0) == (cut != position), cut
        if missing and cut - position > 4:  # its length is read: exactly what it lacks
            assert position + (cut - position) + missing == min(e for e in ends if e > cut)
