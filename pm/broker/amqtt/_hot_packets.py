"""Fix 13 of :mod:`pm.broker.amqtt._broker`, the handler's half: the hot packets a client sends
(PUBLISH QoS 0 and 1, PUBACK) handled where they are read, with no task and no await.

amqtt 0.12.1 parses every packet with its packet classes (a few awaits per field), starts a
task per PUBLISH (``handle_publish``: the message onto the session's delivery queue, then a
PUBACK written under the write lock and drained), and fires the packet events at its plugins.
:meth:`HotPacketHandler.take_hot_packets` does the same for whole hot packets in a buffer
(:mod:`pm.broker.amqtt._incoming` calls it from the connection's ``data_received``): the same
message objects onto the same queue, the same PUBACK bytes, the PUBACK waiter resolved as
amqtt's ``handle_puback`` does.

It declines (takes nothing, and amqtt's own path handles the packets, in order) whenever that
path could behave differently: while a handler task of this connection is still running (a
SUBSCRIBE, a PUBLISH read by amqtt's path: a message taken now would overtake it), while
another coroutine holds the write lock or the transport asked to stop writing (amqtt would
wait in ``drain``), and when a plugin listens to packet events. A QoS 0 PUBLISH with the DUP
flag (amqtt warns and drops it), a QoS 2 one, a topic that is not UTF-8 or holds a wildcard
(amqtt's parser refuses it), or a malformed packet stops the taking at that packet, for
amqtt's path.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

from amqtt.broker import BrokerProtocolHandler
from amqtt.events import MQTTEvents
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.session import IncomingApplicationMessage, Session

_PUBACK_FIRST_BYTE = 0x40
_PUBLISH_TYPE = 3
_DUP = 0x08
_RETAIN = 0x01


def packet_bounds(data: bytes | bytearray, position: int) -> tuple[int, int] | None:
    """(start of the variable header, end) of the whole packet at ``position``; None when it
    is cut short or its remaining length is malformed (amqtt's path reads or refuses it)."""
    size = len(data)
    index = position + 1
    length = 0
    shift = 0
    while True:
        if index >= size or shift > 21:
            return None
        byte = data[index]
        index += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    end = index + length
    return (index, end) if end <= size else None


class HotPacketHandler(BrokerProtocolHandler):
    """amqtt's broker-side protocol handler that takes hot packets from a buffer.

    The reader loop (:class:`pm.broker.amqtt._handler.ConnectionHandler`) calls
    :meth:`start_taking` when it starts and :meth:`stop_taking` when it ends; between the two
    :attr:`handler_tasks` holds the tasks it started for packets of amqtt's path.
    """

    #: Set by the broker's message loop for this connection (fix 13): routes a message at
    #: once, or returns False; and what the loop waits on (a message, a subscription, an
    #: unsubscription, the disconnect).
    route_published: Callable[[Session, str, bytes, int, bool], bool] | None = None
    message_loop_waiters: list[asyncio.Future[Any]] = []  # noqa: RUF012 - replaced, never mutated
    #: Whether the reader loop runs and no plugin listens to packet events (start_taking).
    _taking = False

    def start_taking(self, packet_read: Callable[[], None]) -> None:
        self.handler_tasks: collections.deque[asyncio.Task[None]] = collections.deque()
        self._packet_read = packet_read
        callbacks = self.plugins_manager._event_plugin_callbacks
        self._taking = (
            MQTTEvents.PACKET_RECEIVED not in callbacks and MQTTEvents.PACKET_SENT not in callbacks
        )

    def stop_taking(self) -> None:
        self._taking = False

    def can_take_hot_packets(self) -> bool:
        """Whether amqtt's path would do exactly what :meth:`take_hot_packets` does now."""
        if not self._taking or self.session is None or self.writer is None:
            return False
        tasks = self.handler_tasks
        while tasks and tasks[0].done():
            tasks.popleft()
        if tasks or self._write_lock.locked():
            return False
        return not getattr(self.reader, "writing_paused", True)

    def take_hot_packets(self, data: bytes | bytearray, position: int) -> int:
        """Handle the whole PUBLISH (QoS 0/1) and PUBACK packets of ``data`` from
        ``position`` on, in order; returns where it stopped (``position`` if it declined)."""
        if not self.can_take_hot_packets():
            return position
        start = position
        size = len(data)
        while position < size:
            first = data[position]
            bounds = packet_bounds(data, position)
            if bounds is None:
                break
            body, end = bounds
            if first == _PUBACK_FIRST_BYTE and end - body == 2:
                self._acknowledged((data[body] << 8) | data[body + 1])
            elif first >> 4 == _PUBLISH_TYPE:
                qos = (first >> 1) & 0x03
                if qos > 1 or (qos == 0 and first & _DUP) or end - body < 2:
                    break
                topic_end = body + 2 + ((data[body] << 8) | data[body + 1])
                payload_start = topic_end + 2 if qos else topic_end
                if payload_start > end:
                    break
                try:
                    topic = bytes(data[body + 2 : topic_end]).decode()
                except UnicodeDecodeError:
                    break  # amqtt names such a topic by its bytes' repr
                if "#" in topic or "+" in topic:
                    break  # amqtt's parser refuses it (and discards the packet)
                packet_id = ((data[topic_end] << 8) | data[topic_end + 1]) if qos else None
                self.take_publish(topic, bytes(data[payload_start:end]), packet_id, qos, first)
            else:
                break
            position = end
        if position != start:
            self._packet_read()
        return position

    def take_publish(
        self,
        topic: str,
        payload: bytes,
        packet_id: int | None,
        qos: int,
        first_byte: int,
    ) -> None:
        """amqtt's ``handle_publish`` for QoS 0 (without DUP) and 1, without a task: the
        message routed at once (when the message loop has nothing of this client on its way
        and the broker takes it) or onto the session's delivery queue, then (QoS 1) its
        PUBACK. ``first_byte`` is the packet's first byte (or its low four bits, amqtt's
        ``flags``): its DUP and RETAIN flags."""
        retain = bool(first_byte & _RETAIN)
        session = self.session
        assert session is not None  # can_take_hot_packets checked it
        queue = session.delivered_message_queue
        route = self.route_published
        if (
            route is None
            or not self._message_loop_idle()
            or not queue.empty()
            or not route(session, topic, payload, qos, retain)
        ):
            # Through the connection's message loop, behind what is on its way there.
            message = IncomingApplicationMessage(packet_id, topic, qos, payload, retain)
            # The broker reads its retain flag (and plugins may read it) as amqtt's path
            # sets it.
            message.publish_packet = PublishPacket.build(
                topic, payload, packet_id, bool(first_byte & _DUP), qos, retain
            )
            queue.put_nowait(message)
        if qos and self.writer is not None and packet_id is not None:
            # The message is not handled again, so nothing reads its puback_packet, which
            # amqtt sets to the PubackPacket it writes.
            self.writer.write(b"\x40\x02" + packet_id.to_bytes(2, "big"))

    def _message_loop_idle(self) -> bool:
        """Whether the message loop waits on everything with nothing queued for it: no
        message, subscription or unsubscription of this client is on its way through it."""
        waiters = self.message_loop_waiters
        return (
            bool(waiters)
            and not any(waiter.done() for waiter in waiters)
            and self._pending_subscriptions.empty()
            and self._pending_unsubscriptions.empty()
        )

    def _acknowledged(self, packet_id: int) -> None:
        # amqtt 0.12.1's ProtocolHandler.handle_puback, its warnings included.
        waiter = self._puback_waiters.get(packet_id)
        if waiter is None:
            self.logger.warning(f"Received PUBACK for unknown pending message Id: '{packet_id}'")
        elif waiter.done():
            self.logger.warning(f"PUBACK waiter with Id '{packet_id}' already done")
        else:
            waiter.set_result(PubackPacket.build(packet_id))
