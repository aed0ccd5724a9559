"""The benchmark's fastest requester (bench/_fast_requester.py): its MQTT 3.1.1 packet codec,
checked against the byte layouts the specification gives (section numbers in each test)."""

from __future__ import annotations

import msgspec
import pytest
import trio
import trio.testing

from bench._fast_requester import (
    CONNACK,
    PUBACK,
    PUBLISH,
    FastRequesterError,
    RequestWindow,
    answer_id,
    burst,
    connect_packet,
    puback_packet,
    publish_parts,
    publish_qos1_packet,
    remaining_length,
    request_chunks,
    request_packets,
    split_packets,
    subscribe_packet,
)


@pytest.mark.parametrize(
    ("length", "encoded"),
    [  # the boundaries of Table 2.4, "Size of Remaining Length field"
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_matches_table_2_4(length: int, encoded: bytes) -> None:
    assert remaining_length(length) == encoded
    # and reads back: a PUBACK-typed packet with that many zero bytes of body
    if length < 100_000:
        buffer = bytearray(b"\x40" + encoded + bytes(length))
        [(kind, flags, body)] = split_packets(buffer)
        assert (kind, flags, len(body), buffer) == (PUBACK, 0, length, bytearray())


def test_remaining_length_beyond_four_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="268435456"):
        remaining_length(268_435_456)
    with pytest.raises(FastRequesterError, match="more than four bytes"):
        split_packets(bytearray(b"\x30\xff\xff\xff\xff\x01"))


def test_connect_is_level_4_clean_session_without_credentials() -> None:
    # 3.1.2: protocol name "MQTT", level 4, flags 0b00000010 (clean session), keepalive,
    # then the payload's client identifier (3.1.3.1).
    variable_header = b"\x00\x04MQTT" + b"\x04" + b"\x02" + b"\x00\x3c"
    payload = b"\x00\x03abc"
    expected = b"\x10" + bytes([len(variable_header + payload)]) + variable_header + payload
    assert connect_packet("abc", keepalive=60) == expected


def test_subscribe_has_reserved_flags_0010_and_one_filter() -> None:
    # 3.8.1: fixed header 0x82; 3.8.2: packet identifier; 3.8.3: filter then requested QoS.
    body = b"\x00\x0a" + b"\x00\x03a/b" + b"\x01"
    assert subscribe_packet(10, "a/b", 1) == b"\x82" + bytes([len(body)]) + body


def test_publish_qos1_layout_of_figure_3_11() -> None:
    # 3.3.1: type 3, DUP 0, QoS 01, RETAIN 0 = 0x32; 3.3.2.3's example: topic "a/b",
    # packet identifier 10.
    packet = publish_qos1_packet("a/b", 10, b"hi")
    assert packet == b"\x32\x09" + b"\x00\x03a/b" + b"\x00\x0a" + b"hi"
    [(kind, flags, body)] = split_packets(bytearray(packet))
    assert (kind, flags) == (PUBLISH, 0b0010)
    packet_id, payload = publish_parts(flags, body)
    assert (packet_id, bytes(payload)) == (10, b"hi")


def test_publish_qos0_has_no_packet_identifier() -> None:
    packet_id, payload = publish_parts(0, memoryview(b"\x00\x03a/b" + b"hi"))
    assert (packet_id, bytes(payload)) == (0, b"hi")


def test_puback_is_type_4_with_the_packet_identifier() -> None:
    assert puback_packet(0x1234) == b"\x40\x02\x12\x34"  # 3.4


def test_a_packet_cut_short_waits_for_the_rest() -> None:
    connack = b"\x20\x02\x00\x00"
    publish = publish_qos1_packet("t", 7, b"x" * 200)  # two-byte remaining length
    stream = connack + publish
    buffer = bytearray()
    seen: list[tuple[int, bytes]] = []
    fed = 0
    # cut inside the first header, after it, after a type byte, inside a length, at the end
    for cut in (1, 2, 5, 6, len(stream)):
        buffer += stream[fed:cut]
        fed = cut
        seen += [(kind, bytes(body)) for kind, _flags, body in split_packets(buffer)]
        if cut == 5:
            assert seen == [(CONNACK, b"\x00\x00")] and buffer == bytearray(b"\x32")
    assert seen[1][0] == PUBLISH and len(seen) == 2 and buffer == bytearray()


def test_answer_id_reads_the_digits_after_id() -> None:
    answer = msgspec.json.encode({"id": 3000000000017, "code": 200, "data": {"id": 5}})
    assert answer_id(answer) == 3000000000017
    assert answer_id(memoryview(b'{"code":200,"id":42}')) == 42
    with pytest.raises(FastRequesterError, match="without an id"):
        answer_id(b'{"code":200}')


def test_requests_are_qos1_sanji_requests_with_distinct_ids() -> None:
    chunks, device_of = request_chunks(["aa", "bb"])
    parsed = split_packets(bytearray(b"".join(chunks)))
    assert [kind for kind, _flags, _body in parsed] == [PUBLISH, PUBLISH]
    requests = []
    for packet_number, (_kind, flags, body) in enumerate(parsed, start=1):
        packet_id, payload = publish_parts(flags, body)
        assert packet_id == packet_number
        requests.append(msgspec.json.decode(bytes(payload)))
    assert [r["tunnel"] for r in requests] == ["/bench/aa/answer", "/bench/bb/answer"]
    assert device_of == {requests[0]["id"]: "aa", requests[1]["id"]: "bb"}
    assert {r["method"] for r in requests} == {"get"}


def test_each_write_of_requests_is_whole_packets() -> None:
    # PUBACKs owed go out between two writes: a write ending inside a packet would put a
    # PUBACK inside a request (the broker then hangs or drops the connection).
    devices = [f"device-{n}" for n in range(500)]
    chunks, _ = request_chunks(devices, write_bytes=1000)
    assert len(chunks) > 10
    packets = 0
    for chunk in chunks:
        buffer = bytearray(chunk)
        packets += len(split_packets(buffer))
        assert buffer == bytearray()  # nothing cut short
        assert len(chunk) < 1000 + 200  # about write_bytes: one request over at most
    assert packets == len(devices)


def test_more_requests_than_packet_identifiers_are_refused() -> None:
    with pytest.raises(FastRequesterError, match="65535"):
        request_chunks([f"d{n}" for n in range(65_536)])


async def test_pubacks_owed_go_between_requests_never_inside_one() -> None:
    # A broker that answers every request (and PUBACKs it) as soon as the first bytes come:
    # the requester owes PUBACKs while most requests are still unwritten. Everything the
    # broker receives must parse as whole packets: N requests and N PUBACKs.
    requester, broker = trio.testing.memory_stream_pair()
    devices = [f"device-{n}" for n in range(50)]
    packets, device_of = request_packets(devices)
    received: list[int] = []

    async def answer_everything() -> None:
        buffer = bytearray(await broker.receive_some())
        answers = b"".join(
            publish_qos1_packet(f"/bench/{device}/answer", n, b'{"id":%d,"code":200}' % request)
            for n, (request, device) in enumerate(device_of.items(), start=1)
        )
        await broker.send_all(answers + b"".join(puback_packet(n) for n in range(1, 51)))
        while len(received) < 2 * len(devices):
            received.extend(kind for kind, _flags, _body in split_packets(buffer))
            if len(received) < 2 * len(devices):
                buffer += await broker.receive_some()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_everything)
            requests = RequestWindow(packets, write_bytes=100)
            assert await burst(requester, requests, device_of) > 0
    assert sorted(received) == [PUBLISH] * 50 + [PUBACK] * 50
    assert received[-1] == PUBLISH  # PUBACKs went out before the last request did


def test_a_window_keeps_at_most_that_many_requests_unanswered() -> None:
    packets, _ = request_packets([f"device-{n}" for n in range(10)])
    window = RequestWindow(packets, write_bytes=1, window=3)
    written: list[int] = []  # packets per write
    answered = 0
    while not window.all_sent:
        while (write := window.next_write(answered)) is not None:
            written.append(len(split_packets(bytearray(write))))
            assert window.sent - answered <= 3
        answered += 1  # one answer arrives: one more request may go
    assert sum(written) == 10 and window.next_write(10) is None
    # write_bytes=1 makes every write one packet; the window starts full.
    assert written == [1] * 10 and window.sent == 10


def test_a_window_joins_what_it_releases_into_writes_of_whole_packets() -> None:
    packets, _ = request_packets([f"device-{n}" for n in range(100)])
    size = len(packets[0])
    window = RequestWindow(packets, write_bytes=10 * size, window=25)
    first = window.next_write(0)
    assert first is not None and len(split_packets(bytearray(first))) == 10
    assert [
        len(split_packets(bytearray(w))) for w in (window.next_write(0), window.next_write(0))
    ] == [10, 5]
    assert window.next_write(0) is None  # 25 unanswered: the window is full
    more = window.next_write(7)  # 7 answered: 7 more may go, in one write
    assert more is not None and len(split_packets(bytearray(more))) == 7
    assert window.sent == 32


def test_no_window_releases_the_whole_burst_at_once() -> None:
    packets, _ = request_packets([f"device-{n}" for n in range(50)])
    window = RequestWindow(packets, write_bytes=10**6)
    assert window.next_write(0) == b"".join(packets)
    assert window.all_sent and window.next_write(0) is None
    with pytest.raises(ValueError, match="window -1"):
        RequestWindow(packets, window=-1)
