"""paho's client class as pm.mqtt drives it: reading the socket ahead, the hot packets coded
here (:mod:`pm.mqtt._packets`), no per-topic callbacks."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ._packets import MAX_REMAINING_LENGTH, encode_puback, encode_publish, read_hot_packets

# paho reads every packet with at least three recv() calls (type byte, each length byte, the
# body); ReadAheadClient serves them from one read of up to this many bytes.
_READ_AHEAD_BYTES = 65536
# What paho builds for every MQTT 3.1.1 PUBACK (success, no properties), built once: nothing
# of ours reads them (no on_publish callback).
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_PUBACK_PROPERTIES = Properties(PacketTypes.PUBACK)
_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
# A PUBLISH's topic (2 bytes of length) and packet id take this much of its remaining length.
_PUBLISH_OVERHEAD = 4


class ReadAheadClient(paho.Client):
    """paho's client, reading the socket ahead, coding the hot packets itself, and without
    per-topic callbacks.

    - Reads: one read serves every packet of a burst (three or four syscalls per packet
      were ~8% of the gateway's CPU); :meth:`loop_read` takes the PUBLISH (QoS 0/1) and
      PUBACK packets at the front of what was read itself (:func:`read_hot_packets`), handing
      each message to :attr:`on_publish_received` and queueing its PUBACK, and leaves any
      other packet to paho's reader.
    - Writes: :meth:`publish_fast` encodes a QoS 0/1 PUBLISH itself; it and the PUBACKs go
      into one buffer that is handed to paho's queue whole, as one write, ahead of any packet
      paho queues itself (so nothing is reordered).
    - paho's bookkeeping is kept where it means something: packet ids come from paho's
      counter; with ``max_inflight_messages`` set, each PUBLISH sent here counts in paho's
      in-flight count until its PUBACK, and while paho holds messages of its own (a tracked
      publish, messages queued behind the in-flight cap) every publish goes through paho, in
      order.

    Overrides paho's private ``_sock_recv``, ``_handle_on_message``, ``_handle_pubackcomp``
    and ``_packet_queue`` (paho is pinned; tests/test_private_names.py pins the source of what
    this relies on).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_ahead = b""
        self._read_position = 0
        # The start of a hot packet cut short at the end of a read, put before the next read.
        self._cut_short = b""
        #: Whether the last read from the socket took all the kernel had then (it was shorter
        #: than asked for, or found nothing): a plain TCP socket has nothing more until
        #: readiness says so. (Not for TLS: a TLS read returns one record at most.)
        self.socket_drained = False
        # Packets encoded here, not yet handed to paho's queue.
        self._outgoing = bytearray()
        # With an in-flight cap: ids of the PUBLISH packets sent here and not acknowledged.
        self._unacknowledged: set[int] = set()
        #: Set by every publish (here or through paho); the connection's reader clears it.
        self.published = False
        #: ``(topic, payload)`` of every PUBLISH read here; paho's ``on_message`` gets the rest.
        self.on_publish_received: Callable[[str, bytes], None] | None = None

    @property
    def read_ahead_pending(self) -> bool:
        """Bytes already read from the socket that paho has not consumed yet."""
        return self._read_position < len(self._read_ahead)

    @property
    def keepalive_due(self) -> float:
        """When (``time.monotonic()``) ``loop_misc()`` next has something to do: a keepalive
        after the last packet out, the last bytes in, or an unanswered PINGREQ (paho's
        ``_check_keepalive`` and ``loop_misc`` act on exactly these; every packet moves the
        first two later, a PINGRESP clears the third)."""
        keepalive = self._keepalive
        due = min(self._last_msg_out, self._last_bytes_received) + keepalive
        if self._ping_t > 0:
            due = min(due, self._ping_t + keepalive)
        return due

    # -- writing -----------------------------------------------------------------------------

    def publish_fast(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> MQTTErrorCode:
        """``publish(...).rc`` for a bytes payload of QoS 0 or 1, without paho's per-message
        objects (no acknowledgement to wait on: use ``publish`` for that). Anything else, an
        invalid topic or payload included, goes to ``publish`` (which raises as it did)."""
        cap = self._max_inflight_messages
        if (
            qos > 1
            or self._out_messages  # paho's own messages in flight or queued: keep the order
            or payload.__class__ is not bytes
            or self._protocol != paho.MQTTv311
            or (cap and self._inflight_messages >= cap)
        ):
            return self.publish(topic, payload, qos, retain).rc
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        encoded = topic.encode()
        if (
            not encoded
            or b"+" in encoded
            or b"#" in encoded
            or len(encoded) > 0xFFFF
            or len(encoded) + len(payload) + _PUBLISH_OVERHEAD > MAX_REMAINING_LENGTH
        ):
            return self.publish(topic, payload, qos, retain).rc
        packet_id = 0
        if qos:
            packet_id = self._mid_generate()
            if cap:
                self._unacknowledged.add(packet_id)
                self._inflight_messages += 1
        self._queue_encoded(encode_publish(encoded, payload, packet_id, qos, retain))
        self.published = True
        return _SUCCESS

    def _queue_encoded(self, packet: bytes) -> None:
        outgoing = self._outgoing
        if not outgoing:
            self._call_socket_register_write()
        outgoing += packet

    def _hand_over_outgoing(self) -> None:
        outgoing = self._outgoing
        if outgoing:
            # Command 0: none of paho's after-write handling (QoS 0 PUBLISH, DISCONNECT).
            self._out_packet.append(
                {
                    "command": 0,
                    "mid": 0,
                    "qos": 0,
                    "pos": 0,
                    "to_process": len(outgoing),
                    "packet": outgoing,
                    "info": None,
                }
            )
            self._outgoing = bytearray()

    def _packet_queue(
        self,
        command: int,
        packet: bytes | bytearray,
        mid: int,
        qos: int,
        info: paho.MQTTMessageInfo | None = None,
    ) -> MQTTErrorCode:
        # A packet of paho's goes after those encoded here before it.
        self._hand_over_outgoing()
        if command & 0xF0 == paho.PUBLISH:
            self.published = True
        return super()._packet_queue(command, packet, mid, qos, info)

    def want_write(self) -> bool:
        return bool(self._outgoing or self._out_packet)

    @property
    def several_writes_queued(self) -> bool:
        """Whether the next ``loop_write`` sends more than one buffer (one ``send`` each)."""
        return len(self._out_packet) + (1 if self._outgoing else 0) > 1

    def loop_write(self) -> MQTTErrorCode:
        self._hand_over_outgoing()
        return super().loop_write()

    def write_encoded(self) -> MQTTErrorCode:
        """``loop_write()``, sending the packets encoded here with one ``send`` of their own
        when paho has nothing queued ahead of them (plain TCP): none of paho's queue entry, copy
        and bookkeeping for the one buffer a simulated device writes per request. What the
        kernel does not take stays queued (``want_write()``)."""
        outgoing = self._outgoing
        sock = self._sock
        if self._out_packet or not outgoing or sock is None or isinstance(sock, ssl.SSLSocket):
            # TLS: a write the SSL object refused must be retried with the same bytes, which
            # paho's queue does.
            return self.loop_write()
        try:
            sent = sock.send(outgoing)
        except BlockingIOError:
            return _SUCCESS
        except OSError:
            return self.loop_write()  # paho reports the failure as it always did
        self._last_msg_out = time.monotonic()  # paho's keepalive counts from the last write
        if sent < len(outgoing):
            del outgoing[:sent]
        else:
            self._outgoing = bytearray()
            # paho calls on_socket_register_write only after an unregister: the next packet
            # queued must call it again.
            self._call_socket_unregister_write()
        return _SUCCESS

    # -- reading -----------------------------------------------------------------------------

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Handle the hot packets at the front of what was read (reading once if nothing is
        left), then let paho read one packet if any bytes are left that were not taken."""
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if self._in_packet["command"] == 0 and self._protocol == paho.MQTTv311:
            if self._read_position >= len(self._read_ahead) and not self._read_more():
                # Nothing read: paho's reader reads again and reports the end of the stream or
                # an error as it always did (or finds nothing there either).
                return super().loop_read(max_packets)
            read = self._read_ahead
            packets, position, missing = read_hot_packets(read, self._read_position)
            self._read_position = position
            if packets:
                self._last_bytes_received = time.monotonic()
                rc = self._handle_hot_packets(packets)
                if rc != _SUCCESS:
                    return self._loop_rc_handle(rc)
            if missing and len(read) - position + missing <= _READ_AHEAD_BYTES:
                # Kept for the next read rather than read by paho's slower reader (one packet
                # a read would be); a larger one is paho's, read without copies.
                self._cut_short, self._read_ahead = read[position:], b""
                return _SUCCESS
            if position >= len(read):
                return _SUCCESS
        return super().loop_read(max_packets)

    def _read_more(self) -> bool:
        try:
            data = self._receive()
        except OSError:
            return False  # nothing there yet (BlockingIOError), or an error
        if not data:
            return False  # the end of the stream
        self._read_ahead, self._read_position = data, 0
        return True

    def _receive(self) -> bytes:
        """One read from the socket, after what the last one cut short; paho's errors."""
        try:
            data = super()._sock_recv(_READ_AHEAD_BYTES)
        except BlockingIOError:
            self.socket_drained = True
            raise
        self.socket_drained = len(data) < _READ_AHEAD_BYTES
        if self._cut_short and data:  # at EOF (b"") the cut packet is lost with the connection
            data, self._cut_short = self._cut_short + data, b""
        return data

    def _handle_hot_packets(self, packets: list[tuple[str | None, bytes, int]]) -> MQTTErrorCode:
        on_message = self.on_publish_received
        for topic, payload, packet_id in packets:
            if topic is None:
                rc = self._acknowledged(packet_id)
                if rc != _SUCCESS:
                    return rc
                continue
            if on_message is not None:
                on_message(topic, payload)
            if packet_id and not self._manual_ack:
                # After the callback, as paho does.
                self._queue_encoded(encode_puback(packet_id))
        return _SUCCESS

    def _acknowledged(self, packet_id: int) -> MQTTErrorCode:
        if packet_id in self._out_messages:
            # One of paho's: only the first PUBACK of a message counts (paho's rule).
            return self._do_on_publish(packet_id, _PUBACK_SUCCESS, _PUBACK_PROPERTIES)
        unacknowledged = self._unacknowledged
        if packet_id in unacknowledged:
            unacknowledged.remove(packet_id)
            self._inflight_messages -= 1
            if self._out_messages:
                # A slot is free: paho sends what it queued behind the cap.
                return self._update_inflight()
        return _SUCCESS  # sent here without a cap, or a second PUBACK: nothing to do

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        # paho walks its per-topic callback tree for every incoming message (~4% of the
        # gateway's CPU); we register no per-topic callbacks, so it would always find none.
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> paho.MQTTErrorCode:
        # A PUBACK that reaches paho's reader (after a packet paho read): read here as in
        # _acknowledged, not through paho's decoder and its new ReasonCode and Properties
        # objects (8% of the gateway's samples once). Anything else (MQTT 5, PUBCOMP, a
        # malformed length) goes to paho as before.
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or self._protocol != paho.MQTTv311 or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        with self._out_message_mutex:
            return self._acknowledged(int.from_bytes(packet, "big"))

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise NotImplementedError("per-topic callbacks are skipped by _handle_on_message")

    def _sock_recv(self, bufsize: int) -> bytes:
        start = self._read_position
        if start >= len(self._read_ahead):
            # Raises BlockingIOError when nothing is there, and returns b"" at EOF, as before.
            data = self._receive()
            if len(data) <= bufsize:
                return data
            self._read_ahead, start = data, 0
        end = start + bufsize
        self._read_position = end
        return self._read_ahead[start:end]
