"""Routing in our amqtt broker: which sessions a message goes to (fixes 1 and 2 of
:mod:`pm.broker.amqtt._broker`, which has the whole list and the pinning policy).

Fix 1, retained messages per subscription: amqtt 0.12.1 publishes to a new subscriber every
retained message its filter matches, scanning all of them, and (from its connect-time loop
over every client's filters) for filters the session does not hold. Here only a filter the
session holds gets retained messages, and an exact filter gets its topic's by one lookup.

Fix 2, the subscription index (:class:`pm.broker.amqtt._subscriptions.SubscriptionIndex`):
exact filters by one lookup instead of ``_matches`` on every filter per message.

Fix 12, a burst routed at once: amqtt's broadcast loop routes one message per task and
``asyncio.wait``; here each of its steps routes every message queued, so a burst's deliveries
start together (and, with fix 11, a connection's leave in one write).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import Action
from amqtt.events import BrokerEvents
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.session import Session
from amqtt.utils import format_client_message

from ._subscriptions import Holders, SubscriptionIndex, is_wildcard

# add_subscription's return value for a refused filter (MQTT SUBACK failure code).
_REFUSED = 0x80


class RoutingBroker(Broker):
    """amqtt's broker with its subscription dict replaced by the index, and the routing and
    retained-message delivery that use it.

    Error handling: as amqtt's (a failing delivery task is logged by its broadcast loop).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriptions: SubscriptionIndex = SubscriptionIndex()

    # -- fix 1 --------------------------------------------------------------------------------

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter, qos = subscription
        holders = self._subscriptions.get(topic_filter, ())
        # By client id, as amqtt's add_subscription records them (a reconnected client may
        # be listed under its previous Session object).
        if not any(holder.client_id == session.client_id for holder, _qos in holders):
            return  # no await: amqtt's connect-time loop over all filters stays atomic
        if is_wildcard(topic_filter):
            await super()._publish_retained_messages_for_subscription(subscription, session)
            return
        # amqtt scans every retained message for every new subscription (an f-string and a
        # _matches call each): with one retained status per device, connecting N devices
        # cost O(N^2). An exact filter can only match the retained message of that very topic.
        retained = self._retained_messages.get(topic_filter)
        handler = self._get_handler(session)
        if retained is not None and handler is not None:
            await handler.mqtt_publish(
                retained.topic, retained.data, min(qos, retained.qos or qos), retain=True
            )

    # -- fix 2: keep filters_of_client in step ------------------------------------------------

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        granted = await super().add_subscription(subscription, session)
        if granted != _REFUSED and session.client_id is not None:
            self._subscriptions.filters_of_client[session.client_id].add(subscription[0])
        return granted

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        deleted = super()._del_subscription(a_filter, session)
        if deleted and session.client_id is not None:
            filters = self._subscriptions.filters_of_client.get(session.client_id)
            if filters is not None:
                filters.discard(a_filter)
                if not filters:
                    del self._subscriptions.filters_of_client[session.client_id]
        return deleted

    async def _del_all_subscriptions(self, session: Session) -> None:
        # amqtt scans every filter of every client here, at each disconnect and at each
        # clean-session connect of a known client id.
        filters = self._subscriptions.filters_of_client.get(session.client_id or "", set())
        for topic_filter in list(filters):
            self._del_subscription(topic_filter, session)
            if not self._subscriptions.get(topic_filter, True):
                del self._subscriptions[topic_filter]

    # -- fix 13: a hot PUBLISH routed where it is read ---------------------------------------

    def route_published_now(
        self, session: Session, topic: str, data: bytes, qos: int, retain: bool
    ) -> bool:
        """What amqtt's ``_handle_message_delivery`` does with a valid message a client
        published (queue it for routing, then retain it or clear the retained one), without
        its awaits; False, having done nothing, where amqtt's path could do otherwise: a
        plugin listening to message events or filtering topics, or a topic amqtt refuses
        (it warns, and closes the connection for an empty one; the hot packets' parser
        leaves a wildcard topic to amqtt's, which refuses it)."""
        manager = self.plugins_manager
        callbacks = manager._event_plugin_callbacks
        if (
            not topic
            or topic[0] == "$"
            or manager.is_topic_filtering_enabled()
            or BrokerEvents.MESSAGE_RECEIVED in callbacks
            or BrokerEvents.MESSAGE_BROADCAST in callbacks
            or BrokerEvents.RETAINED_MESSAGE in callbacks
        ):
            return False
        self._broadcast_queue.put_nowait({"session": session, "topic": topic, "data": data})
        if retain:
            retained = self._retained_messages
            if data:
                retained[topic] = RetainedApplicationMessage(session, topic, data, qos)
            else:
                # [MQTT-3.3.1-10/11]: an empty retained message clears the topic's and is not
                # stored; amqtt's retain_message deletes the entry (after emptying it for its
                # plugin event), so a later subscriber gets nothing for it.
                retained.pop(topic, None)
        return True

    def _matching_filters(self, topic: str) -> Iterable[tuple[str, Holders]]:
        """The (filter, holders) pairs a message on ``topic`` goes to; what amqtt finds by
        calling ``_matches`` on every filter."""
        index = self._subscriptions
        exact = index.exact_holders(topic)
        if exact is not None:
            yield topic, exact
        for topic_filter in list(index.wildcards):
            holders = dict.get(index, topic_filter)
            if holders is not None and self._matches(topic, topic_filter):
                yield topic_filter, holders

    async def _run_broadcast(self, running_tasks: Any) -> None:  # noqa: ANN401
        # amqtt 0.12.1's Broker._run_broadcast routes one message per call, and its
        # _broadcast_loop makes a task and an asyncio.wait for each call: in a burst the
        # deliveries were made one or two loop turns apart, each written on its own. Here a
        # call routes every message already queued (fix 12), so the deliveries of a burst
        # start in the same turn and a connection's go out in one write (fix 11). The queue
        # is filled only by other tasks, so the loop ends.
        queue = self._broadcast_queue
        broadcast = await queue.get()
        while True:
            await self._route_broadcast(broadcast, running_tasks)
            if queue.empty():
                return
            broadcast = queue.get_nowait()

    async def _route_broadcast(self, broadcast: dict[str, Any], running_tasks: Any) -> None:  # noqa: ANN401
        # amqtt 0.12.1's Broker._run_broadcast after its queue.get, with the filter scan
        # replaced by the index and its per-message debug f-strings built only when debug
        # logging is on. Everything else (retention for offline persistent sessions, delivery
        # tasks) is unchanged.
        debug = self.logger.isEnabledFor(logging.DEBUG)
        if debug:
            self.logger.debug(f"Processing broadcast message: {broadcast}")
        topic = broadcast["topic"]
        filtering = self.plugins_manager.is_topic_filtering_enabled()

        for _filter, subscriptions in list(self._matching_filters(topic)):
            for target_session, sub_qos in subscriptions:
                qos = broadcast.get("qos", sub_qos)

                if filtering and not await self._topic_filtering(
                    target_session, topic=topic, action=Action.RECEIVE
                ):
                    self.logger.info(
                        f"{target_session.client_id} not allowed to receive messages from "
                        f"TOPIC {topic}."
                    )
                    continue

                state = target_session.transitions.state
                if (
                    state != "connected"
                    and not target_session.clean_session
                    and qos in (QOS_1, QOS_2)
                    and not target_session.is_anonymous
                ):
                    await self._retain_broadcast_message(broadcast, qos, target_session)
                    continue
                if state != "connected":
                    continue
                if debug:
                    self.logger.debug(
                        f"Broadcasting message from "
                        f"{format_client_message(session=broadcast['session'])} on topic "
                        f"'{topic}' to {format_client_message(session=target_session)}",
                    )
                handler = self._get_handler(target_session)
                if handler:
                    task = asyncio.ensure_future(
                        handler.mqtt_publish(topic, broadcast["data"], qos, retain=False),
                    )
                    running_tasks.append(task)
