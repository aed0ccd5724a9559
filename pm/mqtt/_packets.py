"""The MQTT 3.1.1 packets of the hot path, coded here instead of by paho: PUBLISH (QoS 0 and 1)
and PUBACK, both ways. Pure functions on bytes, no I/O.

Why: one Sanji round trip is a PUBLISH and a PUBACK each way, and paho spent ~150 Python calls
a task on them (a ``MQTTMessage`` with a ``threading.Condition`` per message, a log call per
packet that logs nothing, three or four reads of one or two bytes per packet, a dict and a
wake-up per packet written): a third of the gateway's calls, nine tenths of the simulated
fleet's (``python -m bench.cpu_per_task --profile gateway|fleet``). The packet layouts are
MQTT 3.1.1's, section 3.3 (PUBLISH) and 3.4 (PUBACK); remaining lengths are section 2.2.3.

:func:`read_hot_packets` takes only whole packets it knows and stops at the first other one
(or an incomplete or malformed one), which paho then reads as before: what paho did with
anything unusual, it still does.
"""

from __future__ import annotations

PUBLISH = 0x30
PUBACK = 0x40
# The largest remaining length MQTT can encode (four bytes of seven bits).
MAX_REMAINING_LENGTH = 268_435_455

#: One packet :func:`read_hot_packets` took: ``(topic, payload, packet id)`` for a PUBLISH (the
#: id is 0 for QoS 0: MQTT's ids start at 1), ``(None, b"", packet id)`` for a PUBACK.
HotPacket = tuple[str | None, bytes, int]


def encode_publish(topic: bytes, payload: bytes, packet_id: int, qos: int, retain: bool) -> bytes:
    """A PUBLISH of QoS 0 (``packet_id`` unused) or 1, never a duplicate.

    The caller has checked what paho checks: a topic of 1-65,535 bytes without wildcards, a
    remaining length within :data:`MAX_REMAINING_LENGTH`.
    """
    topic_length = len(topic)
    if qos:
        remaining = topic_length + len(payload) + 4
        header = bytes((PUBLISH | 2 | retain, *_remaining_length(remaining)))
        return b"".join(
            (header, topic_length.to_bytes(2, "big"), topic, packet_id.to_bytes(2, "big"), payload)
        )
    remaining = topic_length + len(payload) + 2
    header = bytes((PUBLISH | retain, *_remaining_length(remaining)))
    return b"".join((header, topic_length.to_bytes(2, "big"), topic, payload))


def encode_puback(packet_id: int) -> bytes:
    return bytes((PUBACK, 2, packet_id >> 8, packet_id & 0xFF))


def _remaining_length(length: int) -> tuple[int, ...]:
    if length < 0x80:
        return (length,)
    if length < 0x4000:
        return (length & 0x7F | 0x80, length >> 7)
    digits = []
    while True:
        length, digit = divmod(length, 0x80)
        digits.append(digit | (0x80 if length else 0))
        if not length:
            return tuple(digits)


def read_hot_packets(buffer: bytes, start: int) -> tuple[list[HotPacket], int, int]:
    """The whole PUBLISH (QoS 0 or 1) and PUBACK packets at ``buffer[start:]``, in order;
    where the first packet not taken begins; and, if that one is a PUBLISH or PUBACK cut
    short, how many more bytes it needs at least (else 0).

    Stops at the first packet that is incomplete, of another type (QoS 2 included), or
    unusual in any way (a topic longer than its packet, an empty topic, a topic that is not
    UTF-8, a packet id 0, a PUBACK of another length than 2, a remaining length over four
    bytes): reading on from there is paho's.
    """
    packets: list[HotPacket] = []
    end = len(buffer)
    position = start
    while position < end:
        header = buffer[position]
        kind = header & 0xF0
        if kind != PUBLISH and kind != PUBACK:
            break
        if position + 1 == end:
            return packets, position, 1  # its remaining length is still to come
        # The remaining length: one byte below 128, else up to four of seven bits each.
        length = buffer[position + 1]
        body = position + 2
        if length & 0x80:
            length &= 0x7F
            shift = 7
            while True:
                if shift > 21:
                    return packets, position, 0  # longer than four bytes: paho refuses it
                if body >= end:
                    return packets, position, 1
                digit = buffer[body]
                body += 1
                length |= (digit & 0x7F) << shift
                if not digit & 0x80:
                    break
                shift += 7
        following = body + length
        if following > end:
            return packets, position, following - end
        if kind == PUBACK:
            if length != 2:
                break
            packets.append((None, b"", buffer[body] << 8 | buffer[body + 1]))
        else:
            qos = header & 0x06
            if qos > 2 or length < 2:
                break  # QoS 2 (or the invalid 3), or no room for a topic
            topic_end = body + 2 + (buffer[body] << 8 | buffer[body + 1])
            if topic_end == body + 2 or topic_end + (2 if qos else 0) > following:
                break
            try:
                topic = buffer[body + 2 : topic_end].decode()
            except UnicodeDecodeError:
                break
            if qos:
                packet_id = buffer[topic_end] << 8 | buffer[topic_end + 1]
                if not packet_id:
                    break  # ids start at 1: paho's to answer
                packets.append((topic, buffer[topic_end + 2 : following], packet_id))
            else:
                packets.append((topic, buffer[topic_end:following], 0))
        position = following
    return packets, position, 0
