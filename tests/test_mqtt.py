"""pm.mqtt's reliance on the ssl module, checked without a broker: why it peeks the way it does.
(The paho internals it relies on are pinned by ``tests/test_private_names.py``; the client
against real brokers is ``tests/integration/test_mqtt.py``.)"""

from __future__ import annotations

import socket
import ssl

import pytest


def test_ssl_module_refuses_peek_on_tls_sockets() -> None:
    """Why pm.mqtt peeks through socket.socket.recv: SSLSocket.recv refuses flags."""
    context = ssl.create_default_context()
    left, right = socket.socketpair()
    with left, right:
        wrapped = context.wrap_socket(left, server_hostname="x", do_handshake_on_connect=False)
        with pytest.raises(ValueError):
            wrapped.recv(1, socket.MSG_PEEK)
        wrapped.close()
