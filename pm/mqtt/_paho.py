"""paho's client class as pm.mqtt drives it: reading the socket ahead, no per-topic callbacks."""

from __future__ import annotations

from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

# paho reads every packet with at least three recv() calls (type byte, each length byte, the
# body); ReadAheadClient serves them from one read of up to this many bytes.
_READ_AHEAD_BYTES = 65536
# What paho builds for every MQTT 3.1.1 PUBACK (success, no properties), built once: nothing
# of ours reads them (no on_publish callback).
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_PUBACK_PROPERTIES = Properties(PacketTypes.PUBACK)


class ReadAheadClient(paho.Client):
    """paho's client, reading the socket ahead, and without per-topic callbacks.

    Three or four syscalls per packet (with our pending-bytes peek) were ~8% of the
    gateway's CPU under load; one read now serves every packet of a burst. Overrides paho's
    private ``_sock_recv``, ``_handle_on_message`` and ``_handle_pubackcomp`` (paho is pinned;
    tests/test_private_names.py pins the source of what this relies on).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_ahead = b""
        self._read_position = 0

    @property
    def read_ahead_pending(self) -> bool:
        """Bytes already read from the socket that paho has not consumed yet."""
        return self._read_position < len(self._read_ahead)

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        # paho walks its per-topic callback tree for every incoming message (~4% of the
        # gateway's CPU); we register no per-topic callbacks, so it would always find none.
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> paho.MQTTErrorCode:
        # paho decodes each PUBACK through a wrapper into new ReasonCode and Properties objects:
        # 8% of the gateway's py-spy samples in a 10k-task job through mosquitto (one PUBACK per
        # request). An MQTT 3.1.1 PUBACK is its packet identifier alone (3.4), so it is read
        # here; anything else (MQTT 5, PUBCOMP, a malformed length) goes to paho as before.
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or self._protocol != paho.MQTTv311 or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        mid = int.from_bytes(packet, "big")
        with self._out_message_mutex:
            if mid in self._out_messages:
                # Only the first PUBACK of a message counts (paho's rule).
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _PUBACK_PROPERTIES)
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise NotImplementedError("per-topic callbacks are skipped by _handle_on_message")

    def _sock_recv(self, bufsize: int) -> bytes:
        start = self._read_position
        if start >= len(self._read_ahead):
            # Raises BlockingIOError when nothing is there, and returns b"" at EOF, as before.
            data = super()._sock_recv(_READ_AHEAD_BYTES)
            if len(data) <= bufsize:
                return data
            self._read_ahead, start = data, 0
        end = start + bufsize
        self._read_position = end
        return self._read_ahead[start:end]
