"""The mosquitto child's own MQTT client: it only publishes presence (:class:`Announcer`).

Hand-written MQTT 3.1.1, publish only, because the child must stay small (no trio, and paho is
the gateway's client in :mod:`pm.mqtt`, the one place of ours that imports it): CONNECT with a
clean session and no keepalive (the broker never times it out), then PUBLISH QoS 1 retained.
A daemon thread reads and drops what mosquitto sends back (CONNACK aside, only PUBACKs); no
re-send is needed on loopback to a broker whose life is this process's.

Error handling: :class:`OSError` from the constructor if mosquitto refuses or closes the
connection; a publish on a closed connection raises :class:`OSError` (mosquitto is gone, and
the child exits with it).
"""

from __future__ import annotations

import socket
import struct
import threading

_CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


def _string(text: str) -> bytes:
    encoded = text.encode()
    return struct.pack("!H", len(encoded)) + encoded


def _packet(first_byte: int, body: bytes) -> bytes:
    length, remaining = b"", len(body)
    while True:  # the "remaining length" varint of MQTT 3.1.1 section 2.2.3
        digit, remaining = remaining % 128, remaining // 128
        length += bytes([digit | (0x80 if remaining else 0)])
        if not remaining:
            return bytes([first_byte]) + length + body


class Announcer:
    """A connected publisher; :meth:`publish` is safe from any thread."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self._socket = socket.create_connection((host, port), timeout=5)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Protocol "MQTT" level 4, flags: clean session; keepalive 0.
        connect = _string("MQTT") + b"\x04\x02\x00\x00" + _string(client_id)
        self._socket.sendall(_packet(0x10, connect))
        connack = b""
        while len(connack) < len(_CONNACK_ACCEPTED):
            chunk = self._socket.recv(len(_CONNACK_ACCEPTED) - len(connack))
            if not chunk:
                raise OSError("mosquitto closed the connection before CONNACK")
            connack += chunk
        if connack != _CONNACK_ACCEPTED:
            raise OSError(f"mosquitto refused the connection: CONNACK {connack.hex()}")
        self._socket.settimeout(None)
        self._lock = threading.Lock()
        self._packet_id = 0
        threading.Thread(target=self._drain, name="announcer-acks", daemon=True).start()

    def publish(self, topic: str, payload: bytes) -> None:
        """PUBLISH QoS 1, retained."""
        with self._lock:
            self._packet_id = self._packet_id % 0xFFFF + 1
            body = _string(topic) + struct.pack("!H", self._packet_id) + payload
            self._socket.sendall(_packet(0x33, body))

    def _drain(self) -> None:
        while self._socket.recv(4096):
            pass
