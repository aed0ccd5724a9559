"""Our amqtt broker: ``amqtt.broker.Broker`` with fixes the gateway depends on.

Imported only in the broker child process (:mod:`pm.broker.amqtt._main`). It relies on amqtt
internals, so amqtt is pinned exactly (``amqtt==0.12.1``) and ``tests/test_private_names.py``
fails if any amqtt private name used here changes (it derives them from this source and pins
amqtt's source of each).

Fix 1, retained messages on connect: amqtt 0.12.1 (``Broker._handle_client_session``) loops
over *every* subscription filter of *every* client and publishes the matching retained
messages to the newcomer, awaiting inside that loop. A connecting client then receives
retained messages for filters it never subscribed to (a device would get other devices'
retained requests), and a subscription added by another client during that loop makes it
raise ``RuntimeError: dictionary changed size during iteration``, leaving the connection open
but never served. Only retained messages for filters the session itself holds are published,
and an exact filter finds its topic's retained message by one lookup: amqtt scanned every
retained message per SUBSCRIBE, so N devices each with a retained status took O(N^2) to
connect (docs/broker.md).

Fix 2, a subscription index: amqtt routes each message by scanning every subscription
filter (``Broker._run_broadcast``) and builds debug f-strings per miss, so with one filter per
device the broker's cost per message grows with the fleet (docs/broker.md: ~0.8 ms per round
trip with 1 connection, 2.6-4.7 ms with 1,000). :class:`SubscriptionIndex` replaces the
``_subscriptions`` dict: exact filters are found by one dict lookup, wildcard filters are kept
apart and matched one by one (a gateway has a handful: ``/remote/+/response``). It also
records which filters each client holds, so a disconnect or a clean-session connect removes a
client's subscriptions without scanning all of them, and its ``repr`` is short because amqtt
logs ``repr(self._subscriptions)`` (built even when debug logging is off) on every SUBSCRIBE,
which made connecting N devices cost O(N^2).

Fixes 1 and 2 live in :class:`pm.broker.amqtt._routing.RoutingBroker`, the root of our classes.

Fix 3, authenticate before touching sessions: amqtt 0.12.1
(``Broker._initialize_client_session``) acts on a CONNECT *before* authenticating it: a
clean-session CONNECT deletes the existing session of that client id (its subscriptions), a
persistent one copies its username and password onto the live session, and
``_handle_client_session`` then takes the old connection over. An unauthenticated client
reusing the gateway's client id would silently strip the gateway of its answer subscription.
Here a refused CONNECT gets CONNACK 5 and is closed before any of it; an auth plugin is always
loaded (:mod:`pm.broker.amqtt._auth`), so even without ``broker.auth`` the gateway's client id
is reserved for the gateway's per-run password.

Fix 4, no per-second scan of every session: amqtt's ``Broker._session_monitor`` reads the state
machine of every session each second; here it scans only after connections ended (speed only).
The process-wide garbage-collection pacing for large fleets is :class:`pm.broker.amqtt._gc.GcPacer`.

Fix 5, takeover closes the old connection (MQTT 3.1.1 3.1.4-2): amqtt 0.12.1 closes it only
when a persistent session is resumed; a clean-session CONNECT deleted the old session and left
its connection open and deaf. Here any authenticated CONNECT of a connected client id closes the
previous connection first.

Fixes 6 and 7, in :class:`pm.broker.amqtt._handler.ConnectionHandler`: a connection silent for
1.5 times its keepalive is closed (MQTT 3.1.1 3.1.2.10; amqtt 0.12.1 did nothing; 0: none), and
the PUBACK wait of a QoS 1 message outlasts a burst (amqtt 0.12.1's is a fixed 5 s); fix 9
there: no timer armed per packet read or sent.

Fix 8, a listen backlog for fleets, and fix 11, one write per connection and event-loop turn
(amqtt sends every packet with its own system call), live in
:class:`pm.broker.amqtt._listening.ListeningBroker`, between the two.

Fix 10, what a client published before it left is delivered: amqtt's message loop ended at the
disconnect and dropped the messages still queued (rarely seen while its reader yielded after
every packet; fix 9's reader reads a buffered batch at once). Here they are delivered first.

Fix 12, a burst routed at once: amqtt's message loop takes one published message per
``asyncio.wait`` (a few loop turns each), and its broadcast loop routes one per task, so a
burst read in one go was routed, and its deliveries written, one message at a time. Here each
takes every message already queued (the routing half in
:class:`pm.broker.amqtt._routing.RoutingBroker`).

Fix 13, hot packets taken where they are read: amqtt woke a connection's reader task for every
read, parsed each packet with a few awaits, started a task per PUBLISH, and its message loop
woke (an ``asyncio.wait`` and a task) for every message; with one connection per device every
packet paid all of it. Here a connection is read by an asyncio protocol
(:mod:`pm.broker.amqtt._incoming`) whose ``data_received`` hands whole PUBLISH (QoS 0/1) and
PUBACK packets to the handler (:mod:`pm.broker.amqtt._hot_packets`), which acknowledges,
resolves PUBACK waiters and routes each message at once when the message loop has nothing of
that client on its way (``RoutingBroker.route_published_now``); anything else goes through
amqtt's path, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import BrokerProtocolHandler, Server
from amqtt.errors import AMQTTError, BrokerError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.constants import QOS_0
from amqtt.session import Session
from amqtt.utils import format_client_message, gen_client_id
from transitions import MachineError

from ._handler import KEEPALIVE_GRACE, ConnectionHandler
from ._hot_packets import HotPacketHandler
from ._listening import ListeningBroker

# Seconds between scans for disconnected sessions when no connection was seen ending.
SESSION_SCAN_INTERVAL = 60

# Seconds a takeover waits for the old connection's disconnect handling (milliseconds normally).
TAKEOVER_TIMEOUT = 5.0


class PuppetmasterBroker(ListeningBroker):
    """amqtt's broker with the fixes of this module.

    Restart policy: none inside the child; the gateway's supervisor restarts the whole process.
    Error handling: a failing connection is logged and closed by amqtt's own handlers; nothing
    a client sends stops the broker.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Connections that reached / left the message loop; pm.broker.amqtt._gc.GcPacer reads
        # them to know when closed sessions may have left cyclic garbage.
        self._connections_started = 0
        self._connections_ended = 0
        # Set when a connection's message loop has ended: a takeover waits for it (fix 5).
        self._message_loop_ended: dict[BrokerProtocolHandler, asyncio.Event] = {}

    def connections_closed(self) -> int:
        return self._connections_ended

    def connections_open(self) -> int:
        return self._connections_started - self._connections_ended

    # -- fixes 3, 5 and 6: the CONNECT path ---------------------------------------------------

    async def _initialize_client_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        remote_address: str,
        remote_port: int,
    ) -> tuple[BrokerProtocolHandler, Session]:
        # amqtt 0.12.1's Broker._initialize_client_session with the authentication (and a
        # refusal) moved between reading the CONNECT and acting on it (fix 3), the old
        # connection of a taken-over client id closed (fix 5) and the keepalive made 1.5 times
        # the client's (fix 6); warnings shortened.
        peer = format_client_message(address=remote_address, port=remote_port)
        try:
            handler, client_session = await ConnectionHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except AMQTTError as exc:
            self.logger.warning(f"[MQTT-3.1.0-1] {peer}: Can't read first packet as CONNECT: {exc}")
            raise AMQTTError(exc) from exc
        except MQTTError as exc:
            self.logger.warning(f"Invalid connection from {peer}")
            await writer.close()
            raise MQTTError(exc) from exc
        except NoDataError as exc:
            self.logger.error(f"No data from {peer} : {exc}")  # noqa: TRY400 - as amqtt
            raise AMQTTError(exc) from exc

        # _authenticate ignores its listener argument in amqtt 0.12.1.
        if not await self._authenticate(client_session, None):  # type: ignore[arg-type]
            handler.attach(client_session, reader, writer)
            await handler.mqtt_connack_authorize(False)
            await writer.close()
            # _client_connected logs this at WARNING and releases the connection.
            raise AMQTTError(f"{peer} not authorized (user {client_session.username!r})")
        # Authenticated once here; _handle_client_session asks the plugins again (a cache hit
        # in pm.broker.amqtt._auth, no second scrypt).

        if client_session.client_id:
            await self._close_connection_of(client_session.client_id)

        if client_session.clean_session:
            if client_session.client_id is not None and client_session.client_id != "":
                await self._delete_session(client_session.client_id)
            else:
                client_session.client_id = gen_client_id()
            client_session.parent = 0
        elif client_session.client_id in self._sessions:
            existing_client_session, _ = self._sessions[client_session.client_id]
            existing_client_session.will_flag = client_session.will_flag
            existing_client_session.will_message = client_session.will_message
            existing_client_session.will_topic = client_session.will_topic
            existing_client_session.will_qos = client_session.will_qos
            existing_client_session.keep_alive = client_session.keep_alive
            existing_client_session.username = client_session.username
            existing_client_session.password = client_session.password
            client_session = existing_client_session
            client_session.parent = 1
        else:
            client_session.parent = 0

        timeout_disconnect_delay = self.config.get("timeout-disconnect-delay", 0)
        if client_session.keep_alive > 0 and isinstance(timeout_disconnect_delay, int):
            # MQTT 3.1.1 section 3.1.2.10: silent for 1.5 keepalive periods, the client is
            # gone. amqtt reads each packet header with this as its timeout.
            client_session.keep_alive = (
                client_session.keep_alive * KEEPALIVE_GRACE + timeout_disconnect_delay
            )
        return handler, client_session

    async def _close_connection_of(self, client_id: str) -> None:
        """Close the connection that holds ``client_id`` now, if any (MQTT 3.1.1 3.1.4-2).

        amqtt 0.12.1 closes it only for a persistent session; a clean-session CONNECT deleted
        the old session's subscriptions and left its connection open, alive and deaf. Waits
        (at most :data:`TAKEOVER_TIMEOUT`) until the old message loop has run amqtt's
        disconnect handling (will message, session marked disconnected), so that handling
        cannot later mark the session the new connection reuses as disconnected.
        """
        session, old_handler = self._sessions.get(client_id, (None, None))
        if session is None or old_handler is None or not session.transitions.is_connected():
            return
        self.logger.warning(f"Client {client_id} connected again: closing its previous connection")
        ended = self._message_loop_ended.get(old_handler)
        await old_handler.handle_connection_closed()
        await old_handler.stop()
        if ended is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), TAKEOVER_TIMEOUT)

    # -- fix 4: no per-second scan of every session -------------------------------------------

    async def _session_monitor(self) -> None:
        # amqtt 0.12.1's Broker._session_monitor reads the state machine of every session
        # every second to drop disconnected clean/anonymous ones: ~2% of a core with 10,000
        # devices, and its time slices delay messages. A session only becomes disconnected
        # when its connection ends, so the scan runs when connections ended since the last
        # one, and every SESSION_SCAN_INTERVAL seconds in case a connection ended before
        # reaching the message loop (which is where they are counted). With session expiry
        # configured, amqtt's own monitor runs unchanged.
        if self.config.session_expiry_interval is not None:
            await super()._session_monitor()
            return
        scanned_at_ended = -1
        since_scan = 0.0
        while True:
            if self._connections_ended != scanned_at_ended or since_scan >= SESSION_SCAN_INTERVAL:
                scanned_at_ended = self._connections_ended
                since_scan = 0.0
                sessions_to_remove = [
                    client_id
                    for client_id, (session, _) in self._sessions.items()
                    if session.transitions.state == "disconnected"
                    and (session.is_anonymous or session.clean_session)
                ]
                for client_id in sessions_to_remove:
                    await self._cleanup_session(client_id)
            await asyncio.sleep(1)
            since_scan += 1

    # -- fixes 10 and 12: what a client published is delivered, all that is queued at once -----

    async def _client_message_loop(
        self, client_session: Session, handler: BrokerProtocolHandler
    ) -> None:
        # amqtt 0.12.1's Broker._client_message_loop, except at the disconnect: amqtt ended the
        # loop there and dropped the messages still queued for delivery, which a client that
        # publishes and then disconnects (or whose packets were read in one go) lost. Here the
        # message already taken and the rest of the queue are delivered, in order, before the
        # disconnect (and its will) is handled. And amqtt took one message per asyncio.wait;
        # here every message queued is routed at once (fix 12).
        disconnect_waiter = asyncio.ensure_future(handler.wait_disconnect())
        subscribe_waiter = asyncio.ensure_future(handler.get_next_pending_subscription())
        unsubscribe_waiter = asyncio.ensure_future(handler.get_next_pending_unsubscription())
        wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
        waiters = [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver]
        # Fix 13: while every waiter waits (and their queues are empty) nothing of this client
        # is on its way through this loop, so its hot messages may be routed at once.
        hot = handler if isinstance(handler, HotPacketHandler) else None
        if hot is not None:
            hot.route_published, hot.message_loop_waiters = self.route_published_now, waiters
        try:
            while True:
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if subscribe_waiter in done:
                    await self._handle_subscription(client_session, handler, subscribe_waiter)
                    subscribe_waiter = asyncio.ensure_future(
                        handler.get_next_pending_subscription()
                    )
                if unsubscribe_waiter in done:
                    await self._handle_unsubscription(client_session, handler, unsubscribe_waiter)
                    unsubscribe_waiter = asyncio.ensure_future(
                        handler.get_next_pending_unsubscription()
                    )
                if wait_deliver in done:
                    if not await self._handle_message_delivery(
                        client_session, handler, wait_deliver
                    ) or not await self._deliver_queued(client_session, handler):
                        break
                    wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
                if disconnect_waiter in done:
                    await self._deliver_queued(client_session, handler)
                    await self._handle_disconnect(client_session, handler, disconnect_waiter)
                    break
                waiters = [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver]
                if hot is not None:
                    hot.message_loop_waiters = waiters
        except asyncio.CancelledError:
            pass  # amqtt's loop ends quietly when cancelled
        finally:
            waiters = [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver]
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _deliver_queued(
        self, client_session: Session, handler: BrokerProtocolHandler
    ) -> bool:
        """Hands every message the client published that is queued now to the broadcast
        queue (fix 12), in order; False, like ``_handle_message_delivery``, when one of them
        ends the connection."""
        queue = client_session.delivered_message_queue
        while not queue.empty():
            taken: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            taken.set_result(queue.get_nowait())
            if not await self._handle_message_delivery(client_session, handler, taken):
                return False
        return True

    async def _handle_client_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        client_session: Session,
        handler: BrokerProtocolHandler,
        server: Server,
        listener_name: str,
    ) -> None:
        # amqtt 0.12.1's Broker._handle_client_session; only the last loop changed: amqtt
        # called _publish_retained_messages_for_subscription for every filter of every client
        # (O(filters) awaits per connect). A clean session holds no subscription yet
        # (_initialize_client_session just deleted its old ones); a persistent one gets the
        # retained messages of the filters it holds.
        authenticated = await self._authenticate(
            client_session, self.listeners_config[listener_name]
        )

        if client_session.client_id is None:
            msg = "Client ID was not correctly created/set."
            raise BrokerError(msg)

        while True:
            try:
                client_session.transitions.connect()
                break
            except (MachineError, ValueError):
                if client_session.transitions.is_connected():
                    self.logger.warning(
                        f"Client {client_session.client_id} is already connected, "
                        "performing take-over."
                    )
                    old_session = self._sessions[client_session.client_id]
                    await old_session[1].handle_connection_closed()
                    await old_session[1].stop()
                    break
                self.logger.warning(
                    f"Client {client_session.client_id} is reconnecting too quickly, make it wait"
                )
                await asyncio.sleep(1)

        handler.attach(client_session, reader, writer)
        self._sessions[client_session.client_id] = (client_session, handler)

        await handler.mqtt_connack_authorize(authenticated)

        if not authenticated:
            await writer.close()
            return

        await self.plugins_manager.fire_event(
            BrokerEvents.CLIENT_CONNECTED,
            client_id=client_session.client_id,
            client_session=client_session,
        )

        await handler.start()
        await self._publish_session_retained_messages(client_session)

        if not client_session.clean_session:
            held = self._subscriptions.filters_of_client.get(client_session.client_id, ())
            for topic_filter in list(held):
                await self._publish_retained_messages_for_subscription(
                    (topic_filter, QOS_0), client_session
                )

        self._connections_started += 1
        ended = self._message_loop_ended[handler] = asyncio.Event()
        try:
            await self._client_message_loop(client_session, handler)
        finally:
            self._connections_ended += 1
            del self._message_loop_ended[handler]
            ended.set()
