"""Our amqtt broker: ``amqtt.broker.Broker`` with fixes the gateway depends on.

Imported only in the broker child process (:mod:`pm._broker_process`). It relies on amqtt
internals, so amqtt is pinned exactly (``amqtt==0.12.1``) and
``tests/test_amqtt_broker.py`` fails if the internals it overrides move.

The fix: on every client connection, amqtt 0.12.1 (``Broker._handle_client_session``) loops
over *every* subscription filter of *every* client and publishes the matching retained
messages to the newcomer, awaiting inside that loop. Two consequences, both seen in the
gateway's restart tests:

- a connecting client receives retained messages for filters it never subscribed to (a
  device would get other devices' retained requests);
- a subscription added by another client during that loop makes it raise
  ``RuntimeError: dictionary changed size during iteration``; the connection is then left
  open but never served, so its device silently stops receiving anything.

Only retained messages for a filter the session itself holds are published; for any other
filter the override returns without suspending, so the loop can no longer be interleaved.
"""

from __future__ import annotations

from amqtt.broker import Broker
from amqtt.session import Session


class PuppetmasterBroker(Broker):
    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter = subscription[0]
        holders = self._subscriptions.get(topic_filter, ())
        # By client id, as amqtt's add_subscription records them (a reconnected client may
        # be listed under its previous Session object).
        if not any(holder.client_id == session.client_id for holder, _qos in holders):
            return  # no await: amqtt's connect-time loop over all filters stays atomic
        await super()._publish_retained_messages_for_subscription(subscription, session)
