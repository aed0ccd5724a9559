"""pm.mqtt's reliance on the ssl module, checked without a broker: why it peeks the way it does.
(The paho internals it relies on are pinned by ``tests/test_private_names.py``; the client
against real brokers is ``tests/integration/test_mqtt.py``.)"""

from __future__ import annotations

import socket
import ssl

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from pm.mqtt._paho import _READ_AHEAD_BYTES as READ_AHEAD_BYTES
from pm.mqtt._paho import ReadAheadClient


def test_ssl_module_refuses_peek_on_tls_sockets() -> None:
    """Why pm.mqtt peeks through socket.socket.recv: SSLSocket.recv refuses flags."""
    context = ssl.create_default_context()
    left, right = socket.socketpair()
    with left, right:
        wrapped = context.wrap_socket(left, server_hostname="x", do_handshake_on_connect=False)
        with pytest.raises(ValueError):
            wrapped.recv(1, socket.MSG_PEEK)
        wrapped.close()


def test_a_read_says_whether_it_drained_the_socket() -> None:
    """The reader skips its peek after a read shorter than asked for (the kernel had no more
    then; readiness says when more comes), and peeks after a full one."""
    client = ReadAheadClient(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        client._sock = left
        right.sendall(b"x" * 10)
        assert client._receive() == b"x" * 10
        assert client.socket_drained
        right.sendall(b"y" * (READ_AHEAD_BYTES + 1))
        assert len(client._receive()) == READ_AHEAD_BYTES
        assert not client.socket_drained  # a full read: there may be more (there is)
        assert client._receive() == b"y"
        assert client.socket_drained
        with pytest.raises(BlockingIOError):
            client._receive()
        assert client.socket_drained
        client._sock = None
