"""The amqtt broker that publishes device presence (issue 11): :class:`PresenceBroker`.

A device is online while a connected client is subscribed to its request topic, and offline
once that ends: an UNSUBSCRIBE, or the connection ending (DISCONNECT, lost, keepalive expired,
taken over by a new connection with the same client id). Each change is published as the
device would under protocol v1.1: a retained ``online``/``offline`` on its status topic
(:mod:`pm.broker._presence`), so the gateway reads presence from one topic whatever the
source.

Kept apart from :mod:`pm.broker.amqtt._broker` (the fixes) because it is a feature on top of
them; the bookkeeping is pure and unit-tested (``tests/test_broker_presence.py``).

Restart policy: as :class:`PuppetmasterBroker` (none inside the child). A broker restart loses
its retained statuses; devices that come back subscribe again and are announced again.
"""

from __future__ import annotations

from typing import Any

from amqtt.broker import BrokerProtocolHandler, RetainedApplicationMessage
from amqtt.mqtt.constants import QOS_1
from amqtt.session import Session

from pm.broker._presence import OFFLINE, ONLINE, BrokerPresence, PresenceTopics

from ._broker import PuppetmasterBroker

# add_subscription's return value for a refused filter (MQTT SUBACK failure code).
_REFUSED = 0x80


class PresenceBroker(PuppetmasterBroker):
    """:class:`PuppetmasterBroker` plus presence announcements on the status topics.

    Error handling: announcing never raises into a client's handling (it only stores a
    retained message and queues a broadcast, both in memory).
    """

    def __init__(self, *args: Any, presence: PresenceTopics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._presence = BrokerPresence(presence)
        # Announcements made, for tests.
        self.announced = 0

    def _announce(self, device: str, payload: bytes) -> None:
        # What Broker.retain_message and _broadcast_message do, without their awaits (the
        # plugin event, an unbounded queue's put), so _del_subscription, which is not a
        # coroutine, can announce in order with everything else.
        topic = self._presence.status_topic(device)
        self._retained_messages[topic] = RetainedApplicationMessage(None, topic, payload, QOS_1)
        self._broadcast_queue.put_nowait({"session": None, "topic": topic, "data": payload})
        self.announced += 1

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        granted = await super().add_subscription(subscription, session)
        if granted != _REFUSED and session.client_id and session.transitions.is_connected():
            device = self._presence.subscribed(session.client_id, subscription[0])
            if device is not None:
                self._announce(device, ONLINE)
        return granted

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        deleted = super()._del_subscription(a_filter, session)
        if deleted and session.client_id:
            device = self._presence.unsubscribed(session.client_id, a_filter)
            if device is not None:
                self._announce(device, OFFLINE)
        return deleted

    async def _client_message_loop(
        self, client_session: Session, handler: BrokerProtocolHandler
    ) -> None:
        # The loop is the connection's life. A persistent session resumed here already holds
        # its subscriptions (no SUBSCRIBE comes): its devices are online from now.
        client_id = client_session.client_id or ""
        connection = self._presence.connected(client_id)
        for topic_filter in list(self._subscriptions.filters_of_client.get(client_id, ())):
            device = self._presence.subscribed(client_id, topic_filter)
            if device is not None:
                self._announce(device, ONLINE)
        try:
            await super()._client_message_loop(client_session, handler)
        finally:
            for device in self._presence.disconnected(client_id, connection):
                self._announce(device, OFFLINE)
