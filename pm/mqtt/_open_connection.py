"""Opening one MQTT connection: a fresh paho client configured for it, the blocking TCP (and
TLS) connect in a worker thread, ``TCP_NODELAY``; and the last will sent with every CONNECT."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, NamedTuple

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion

from ._connection import Connection
from ._paho import ReadAheadClient

if TYPE_CHECKING:
    from ._client import MqttClient


class LastWill(NamedTuple):
    """What the broker publishes for a client whose connection ends without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


async def open_connection(owner: MqttClient) -> Connection | None:
    """Open ``owner``'s TCP connection and send CONNECT; None (reason in
    ``owner._connect_error``) on failure."""
    client = ReadAheadClient(
        CallbackAPIVersion.VERSION2,
        client_id=owner._client_id,
        clean_session=True,
        protocol=paho.MQTTv311,
    )
    if owner._username:
        client.username_pw_set(owner._username, owner._password)
    if owner._will is not None:
        client.will_set(*owner._will)
    # paho's default of 20 in flight caps request throughput; 0 = no cap on queued messages.
    client.max_inflight_messages_set(owner._max_inflight)
    client.max_queued_messages_set(0)
    if owner._ssl_context is not None:
        # Verifies the certificate chain and the host name; ssl.SSLError (an OSError) from
        # the handshake is a failed attempt like any other.
        client.tls_set_context(owner._ssl_context)
    try:
        # The only blocking call: DNS + TCP (+ TLS) handshake. Abandoning it on cancel leaves
        # at most one half-open socket to a client object nobody references.
        await trio.to_thread.run_sync(
            client.connect, owner._host, owner._port, owner._keepalive, abandon_on_cancel=True
        )
    except OSError as exc:
        owner._connect_error = f"{type(exc).__name__}: {exc}"
        return None
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    # Without it, Nagle + delayed ACK hold each small packet ~40 ms: QoS 1 request/response
    # drops to ~22 round trips/s.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Connection(owner, client, sock)
