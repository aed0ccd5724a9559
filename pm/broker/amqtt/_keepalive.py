"""Keepalive enforcement for the amqtt broker (fix 6 of :mod:`pm.broker.amqtt._broker`)."""

from __future__ import annotations

import asyncio

from amqtt.broker import BrokerProtocolHandler

# MQTT 3.1.1 section 3.1.2.10: a client silent for 1.5 times its keepalive is disconnected.
KEEPALIVE_GRACE = 1.5


class KeepaliveHandler(BrokerProtocolHandler):
    """amqtt's broker-side protocol handler, closing a connection whose keepalive expired.

    amqtt 0.12.1 reads each packet header with the session's keepalive as timeout, then calls
    ``handle_read_timeout``, which its broker handler leaves empty: a silent client (a device
    that lost power behind a NAT) kept its connection forever. Here the timeout ends the
    connection like a lost socket: amqtt's message loop then sends the will, stops the handler
    (closing the socket) and marks the session disconnected.
    """

    def handle_read_timeout(self) -> None:
        # Synchronous in amqtt; handle_connection_closed only resolves the disconnect waiter.
        self._keepalive_expiry = asyncio.ensure_future(self.handle_connection_closed())
