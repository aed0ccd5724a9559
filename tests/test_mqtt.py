"""pm.mqtt's reliance on paho and the ssl module, checked without a broker: the paho methods
its read-ahead overrides are the ones it was written against, and why it peeks the way it does.
(The client against real brokers is ``tests/integration/test_mqtt.py``.)"""

from __future__ import annotations

import hashlib
import inspect
import socket
import ssl

import pytest

# sha256 (first 16 hex digits) of the paho 2.2.0 source of the methods that ReadAheadClient
# (pm/mqtt/_paho.py) overrides (_sock_recv, _handle_on_message) or relies on calling the first
# per packet (_packet_read).
# A mismatch means paho changed: re-read them, adapt the override, update the digests.
_PINNED_PAHO_SOURCES = {
    "_sock_recv": "c3b9043a46dd81b7",
    "_packet_read": "bbe32d8af1e37955",
    "_handle_on_message": "8ccc46fdb090aead",
}


def test_the_paho_methods_the_read_ahead_relies_on_are_unchanged() -> None:
    import paho.mqtt.client as paho

    digests = {
        name: hashlib.sha256(inspect.getsource(getattr(paho.Client, name)).encode()).hexdigest()[
            :16
        ]
        for name in _PINNED_PAHO_SOURCES
    }
    assert digests == _PINNED_PAHO_SOURCES


def test_ssl_module_refuses_peek_on_tls_sockets() -> None:
    """Why pm.mqtt peeks through socket.socket.recv: SSLSocket.recv refuses flags."""
    context = ssl.create_default_context()
    left, right = socket.socketpair()
    with left, right:
        wrapped = context.wrap_socket(left, server_hostname="x", do_handshake_on_connect=False)
        with pytest.raises(ValueError):
            wrapped.recv(1, socket.MSG_PEEK)
        wrapped.close()
