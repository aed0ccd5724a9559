"""The fastest requester: the true ceiling of scenario (1), a minimal MQTT 3.1.1 client that
does strictly less per round trip than the gateway can.

It speaks MQTT on a plain TCP stream (``TCP_NODELAY``, as trio sets it) with the gateway's
QoS both ways: requests are QoS 1 PUBLISHes (the broker answers PUBACK), answers arrive on a
QoS 1 subscription and each gets its PUBACK, like the gateway's ``/remote/+/response``. What
it leaves out, and the gateway cannot: every request is encoded before the clock starts and
written in large writes (~64 KiB of whole packets), all at once or at most a window of
them unanswered (:class:`RequestWindow`); an answer is found by its packet type and
the digits after ``"id":`` (no JSON decode); no store, no HTTP, no per-device actor, no
timeout, no retry.

Used only by the benchmark (:mod:`bench.dispatch`); the packet codec is pure and tested
against the MQTT 3.1.1 specification's byte layouts (``tests/test_fast_requester.py``).

Error handling: any protocol surprise (a refused CONNECT or SUBSCRIBE, an unknown answer id,
the broker closing the connection, more requests than packet ids) raises
:exc:`FastRequesterError`; the caller bounds the whole run with its own hang guard.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable

import msgspec
import trio

# Request ids: far above any task id a gateway hands out in a run and apart from the other
# requesters' (bench._load), so the simulator never mistakes one for a re-sent request.
_request_ids = itertools.count(3 * 10**12)
_encode = msgspec.json.Encoder().encode

WRITE_BYTES = 64 * 1024
READ_BYTES = 256 * 1024
MAX_PACKET_ID = 0xFFFF  # MQTT packet identifiers are 16 bits, 0 is not allowed
ANSWER_FILTER = "/bench/+/answer"

# Control packet types (the high nibble of the fixed header's first byte, MQTT 3.1.1 2.2.1).
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBACK = 9


class FastRequesterError(RuntimeError):
    """The broker did not behave as a round trip needs."""


# -- the codec (pure) ---------------------------------------------------------------------------


def remaining_length(length: int) -> bytes:
    """The fixed header's variable-length "Remaining Length" (MQTT 3.1.1, 2.2.3)."""
    if not 0 <= length <= 268_435_455:
        raise ValueError(f"remaining length {length} outside 0..268435455")
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | 0x80 if length else digit)
        if not length:
            return bytes(encoded)


def utf8_string(value: str) -> bytes:
    """A UTF-8 encoded string with its two-byte big-endian length (MQTT 3.1.1, 1.5.3)."""
    encoded = value.encode()
    return len(encoded).to_bytes(2, "big") + encoded


def connect_packet(client_id: str, keepalive: int = 0) -> bytes:
    """CONNECT, protocol level 4, clean session, no will, no credentials (3.1)."""
    body = utf8_string("MQTT") + bytes([4, 0x02]) + keepalive.to_bytes(2, "big")
    body += utf8_string(client_id)
    return b"\x10" + remaining_length(len(body)) + body


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    """SUBSCRIBE to one filter; its fixed header flags are 0b0010 (3.8.1)."""
    body = packet_id.to_bytes(2, "big") + utf8_string(topic_filter) + bytes([qos])
    return b"\x82" + remaining_length(len(body)) + body


def publish_qos1_packet(topic: str, packet_id: int, payload: bytes) -> bytes:
    """PUBLISH at QoS 1, not DUP, not retained: flags 0b0010 (3.3.1), then the topic name and
    the packet identifier (3.3.2), then the payload."""
    body = utf8_string(topic) + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + remaining_length(len(body)) + body


def puback_packet(packet_id: int) -> bytes:
    """PUBACK: type 4, remaining length 2, the packet identifier (3.4)."""
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def split_packets(buffer: bytearray) -> list[tuple[int, int, memoryview]]:
    """The complete packets at the front of ``buffer`` as (type, flags, body), removed from it.

    A packet cut short stays in the buffer for the next read. The bodies are views of a copy
    of the bytes taken, so they stay valid when the buffer changes.
    """
    position = 0
    spans: list[tuple[int, int, int]] = []
    while (header := _fixed_header(buffer, position)) is not None:
        body_start, body_end = header
        spans.append((position, body_start, body_end))
        position = body_end
    if not spans:
        return []
    taken = memoryview(bytes(buffer[:position]))
    del buffer[:position]
    return [(taken[at] >> 4, taken[at] & 0x0F, taken[start:stop]) for at, start, stop in spans]


def _fixed_header(buffer: bytearray, position: int) -> tuple[int, int] | None:
    """Where the body of the packet at ``position`` starts and ends; None if it is incomplete."""
    cursor = position + 1
    length = 0
    for shift in (0, 7, 14, 21):
        if cursor >= len(buffer):
            return None
        digit = buffer[cursor]
        cursor += 1
        length |= (digit & 0x7F) << shift
        if not digit & 0x80:
            return (cursor, cursor + length) if cursor + length <= len(buffer) else None
    raise FastRequesterError("malformed remaining length: more than four bytes")


def publish_parts(flags: int, body: memoryview) -> tuple[int, memoryview]:
    """(packet identifier, payload) of a PUBLISH body; identifier 0 at QoS 0 (3.3.2)."""
    topic_end = 2 + int.from_bytes(body[:2], "big")
    if flags & 0x06:
        return int.from_bytes(body[topic_end : topic_end + 2], "big"), body[topic_end + 2 :]
    return 0, body[topic_end:]


def answer_id(payload: bytes | memoryview) -> int:
    """The Sanji ``id`` of an answer: the digits after its first ``"id":`` (no JSON decode)."""
    text = bytes(payload[:64])
    start = text.find(b'"id":')
    if start < 0:
        raise FastRequesterError(f"answer without an id: {bytes(payload[:80])!r}")
    start += 5
    stop = start
    while stop < len(text) and 0x30 <= text[stop] <= 0x39:
        stop += 1
    return int(text[start:stop])


def request_packets(devices: list[str]) -> tuple[list[bytes], dict[int, str]]:
    """One QoS 1 Sanji request per device (packet ids 1..N), each a whole PUBLISH packet; and
    the device of each request id."""
    if len(devices) > MAX_PACKET_ID:
        raise FastRequesterError(f"{len(devices)} requests: at most {MAX_PACKET_ID} at once")
    packets: list[bytes] = []
    device_of: dict[int, str] = {}
    for packet_id, device in enumerate(devices, start=1):
        request_id = next(_request_ids)
        device_of[request_id] = device
        request = {
            "id": request_id,
            "method": "get",
            "resource": "/bench",
            "data": {},
            "tunnel": f"/bench/{device}/answer",
        }
        packets.append(publish_qos1_packet(f"/remote/{device}", packet_id, _encode(request)))
    return packets, device_of


class RequestWindow:
    """Which requests go out next: whole packets joined into writes of about ``write_bytes``
    (PUBACKs owed are written between two writes, so none may end inside a packet), with at
    most ``window`` requests unanswered at any time (0: no limit, the whole burst at once).

    Pure: the caller says how many answers arrived; no I/O, no clock.
    """

    def __init__(self, packets: list[bytes], *, write_bytes: int = WRITE_BYTES, window: int = 0):
        if window < 0:
            raise ValueError(f"window {window}: 0 (no limit) or more")
        self._packets = packets
        self._write_bytes = write_bytes
        self._window = window or len(packets)
        self.sent = 0

    @property
    def all_sent(self) -> bool:
        return self.sent == len(self._packets)

    def next_write(self, answered: int) -> bytes | None:
        """The next write once ``answered`` requests were answered, or None if the window is
        full (or every request was written)."""
        allowed = min(len(self._packets), answered + self._window) - self.sent
        if allowed <= 0:
            return None
        first = self.sent
        size = 0
        while self.sent < first + allowed and (size < self._write_bytes or self.sent == first):
            size += len(self._packets[self.sent])
            self.sent += 1
        return b"".join(self._packets[first : self.sent])


def request_chunks(
    devices: list[str], write_bytes: int = WRITE_BYTES
) -> tuple[list[bytes], dict[int, str]]:
    """The whole burst's writes at once (no window), and the device of each request id."""
    packets, device_of = request_packets(devices)
    window = RequestWindow(packets, write_bytes=write_bytes)
    chunks: list[bytes] = []
    while (chunk := window.next_write(0)) is not None:
        chunks.append(chunk)
    return chunks, device_of


# -- the run (I/O) ------------------------------------------------------------------------------


async def fast_round_trips(
    port: int,
    devices: list[str],
    *,
    host: str = "127.0.0.1",
    write_bytes: int = WRITE_BYTES,
    window: int = 0,
) -> float:
    """One request to each device, at most ``window`` unanswered at once (0: all at once);
    returns round trips per second, first write to the last answer. Every request must be
    answered once, and every request PUBACKed."""
    packets, device_of = request_packets(devices)
    requests = RequestWindow(packets, write_bytes=write_bytes, window=window)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        buffer = bytearray()
        await stream.send_all(connect_packet(f"bench-fast-{uuid.uuid4().hex[:8]}"))
        await _expect(stream, buffer, CONNACK, lambda body: body[1] == 0, "CONNECT refused")
        await stream.send_all(subscribe_packet(1, ANSWER_FILTER, 1))
        await _expect(stream, buffer, SUBACK, lambda body: body[2] == 1, "SUBSCRIBE not QoS 1")
        return await burst(stream, requests, device_of, buffer)


async def _expect(
    stream: trio.abc.Stream,
    buffer: bytearray,
    kind: int,
    ok: Callable[[memoryview], bool],
    problem: str,
) -> None:
    """Read until one packet arrives; it must be of ``kind`` and pass ``ok``."""
    while True:
        for got, _flags, body in split_packets(buffer):
            if got != kind or not ok(body):
                raise FastRequesterError(f"{problem}: packet type {got} {bytes(body)!r}")
            return
        data = await stream.receive_some(READ_BYTES)
        if not data:
            raise FastRequesterError("the broker closed the connection")
        buffer += data


async def burst(
    stream: trio.abc.Stream,
    requests: RequestWindow,
    device_of: dict[int, str],
    buffer: bytearray | None = None,
) -> float:
    """Write ``requests`` on a connected, subscribed ``stream`` as its window allows and read
    until every request is answered and PUBACKed; returns round trips per second.
    ``buffer``: bytes already read past the SUBACK."""
    buffer = bytearray() if buffer is None else buffer
    # One writer owns the stream (trio allows one send_all at a time): the reader queues the
    # PUBACKs it owes and wakes it; owed PUBACKs go between two writes of requests. Every
    # answer owes a PUBACK, so every answer wakes the writer, which may then send more.
    owed = bytearray()
    wake = trio.Event()
    finished = trio.Event()
    unanswered = set(device_of)
    acknowledged = 0

    async def write() -> None:
        nonlocal wake
        while True:
            if owed:
                acknowledgements = bytes(owed)
                owed.clear()
                await stream.send_all(acknowledgements)
            elif (chunk := requests.next_write(len(device_of) - len(unanswered))) is not None:
                await stream.send_all(chunk)
            elif finished.is_set():
                return  # the PUBACKs owed for the last answers went out first
            else:
                await wake.wait()
                wake = trio.Event()

    async def read() -> None:
        nonlocal acknowledged
        while unanswered or acknowledged < len(device_of):
            data = await stream.receive_some(READ_BYTES)
            if not data:
                raise FastRequesterError("the broker closed the connection")
            buffer.extend(data)
            for kind, flags, body in split_packets(buffer):
                if kind == PUBLISH:
                    packet_id, payload = publish_parts(flags, body)
                    request_id = answer_id(payload)
                    if request_id not in unanswered:
                        raise FastRequesterError(f"answer to an unknown request {request_id}")
                    unanswered.discard(request_id)
                    if packet_id:
                        owed.extend(puback_packet(packet_id))
                elif kind == PUBACK:
                    acknowledged += 1
            if owed:
                wake.set()
            if not unanswered and answered_at[0] == 0.0:
                answered_at[0] = time.perf_counter()
        finished.set()
        wake.set()

    answered_at = [0.0]
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        nursery.start_soon(read)
    return len(device_of) / (answered_at[0] - started)
