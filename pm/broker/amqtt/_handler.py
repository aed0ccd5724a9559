"""amqtt's broker-side connection handler with fixes 6 and 7 of :mod:`pm.broker.amqtt._broker`:
the keepalive enforced, and a PUBACK wait that outlasts a burst."""

from __future__ import annotations

import asyncio

from amqtt.broker import BrokerProtocolHandler
from amqtt.errors import AMQTTError
from amqtt.mqtt.puback import PubackPacket
from amqtt.session import OUTGOING, IncomingApplicationMessage, OutgoingApplicationMessage

# MQTT 3.1.1 section 3.1.2.10: a client silent for 1.5 times its keepalive is disconnected.
KEEPALIVE_GRACE = 1.5
# Seconds the broker waits for the PUBACK of a QoS 1 message it sent (amqtt 0.12.1: a fixed
# 5). Under a burst the broker's own event loop falls seconds behind and reads PUBACKs late, so
# 5 s expired for messages the client had received and acknowledged (docs/broker.md has the
# burst sizes that did it). The wait only bounds what a client that never acknowledges can
# hold: a disconnect ends every wait at once.
PUBACK_TIMEOUT = 60.0


class ConnectionHandler(BrokerProtocolHandler):
    """amqtt's broker-side protocol handler with two fixes.

    Keepalive (fix 6): amqtt 0.12.1 reads each packet header with the session's keepalive as
    timeout, then calls ``handle_read_timeout``, which its broker handler leaves empty: a
    silent client (a device that lost power behind a NAT) kept its connection forever. Here
    the timeout ends the connection like a lost socket: amqtt's message loop then sends the
    will, stops the handler (closing the socket) and marks the session disconnected.

    PUBACK wait (fix 7): amqtt waits a hard-coded 5 s for the PUBACK of each QoS 1 message it
    sends, then logs a warning, drops the message from the session's in-flight messages (so
    a resumed persistent session is not sent it again) and fails the delivery task. Here the
    wait is :data:`PUBACK_TIMEOUT`; everything else is amqtt's.

    Error handling: as amqtt's: an expired wait raises ``TimeoutError`` in the delivery task
    (logged, counted by :class:`pm.broker.amqtt._logs.PubackTimeoutFilter`); a closed
    connection cancels every wait (amqtt's ``_stop_waiters``).
    """

    def handle_read_timeout(self) -> None:
        # Synchronous in amqtt; handle_connection_closed only resolves the disconnect waiter.
        self._keepalive_expiry = asyncio.ensure_future(self.handle_connection_closed())

    async def _handle_qos1_message_flow(
        self, app_message: OutgoingApplicationMessage | IncomingApplicationMessage
    ) -> None:
        if app_message.direction != OUTGOING:
            await super()._handle_qos1_message_flow(app_message)
            return
        # amqtt 0.12.1's ProtocolHandler._handle_qos1_message_flow, outgoing branch, with
        # PUBACK_TIMEOUT for its fixed 5 s.
        if app_message.qos != 1:
            raise ValueError(f"Expected QOS_1 message, got QOS_{app_message.qos}")
        if app_message.packet_id is None:
            raise ValueError("Packet ID is not set")
        if app_message.puback_packet:
            raise AMQTTError(f"Message '{app_message.packet_id}' has already been acknowledged")
        if self.session is None:
            raise AMQTTError("Session is not initialized.")
        packet_id = app_message.packet_id
        if packet_id not in self.session.inflight_out and isinstance(
            app_message, OutgoingApplicationMessage
        ):
            self.session.inflight_out[packet_id] = app_message
        # A PUBLISH already sent makes this a retry (DUP set).
        publish_packet = app_message.build_publish_packet(
            dup=app_message.publish_packet is not None
        )
        await self._send_packet(publish_packet)
        app_message.publish_packet = publish_packet
        waiter: asyncio.Future[PubackPacket] = asyncio.Future()
        self._puback_waiters[packet_id] = waiter
        try:
            app_message.puback_packet = await asyncio.wait_for(waiter, timeout=PUBACK_TIMEOUT)
        except TimeoutError:
            # amqtt's words: pm.broker.amqtt._logs counts this warning instead of logging it.
            message = f"Timeout waiting for PUBACK for packet ID {packet_id}"
            self.logger.warning(message)
            raise TimeoutError(message) from None
        finally:
            self._puback_waiters.pop(packet_id, None)
            self.session.inflight_out.pop(packet_id, None)
