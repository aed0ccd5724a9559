"""The MQTT client: one connection at a time, reconnected forever (see :mod:`pm.mqtt`)."""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Callable
from typing import Protocol

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import MQTTErrorCode

from ._connection import Connection, ConnectionLost, MqttError
from ._open_connection import LastWill, open_connection

# One logger for the package: "pm.mqtt" is what log configurations name.
log = logging.getLogger("pm.mqtt")

# How long the broker has to answer CONNECT with CONNACK and the restored SUBSCRIBE with SUBACK
# before we give up on that connection and try again.
_HANDSHAKE_TIMEOUT = 10.0
# On exit, how long we wait for our DISCONNECT to leave before closing the socket regardless.
_DISCONNECT_TIMEOUT = 1.0


class Acknowledgement(Protocol):
    """What :meth:`MqttClient.publish_tracked` returns (paho's ``MQTTMessageInfo``)."""

    def is_published(self) -> bool: ...


class MqttClient:
    """A connected (or reconnecting) MQTT client; create it with :func:`open_mqtt_client`.

    Attributes:
      connected: True while a connection is up *and* its subscriptions are restored.
      generation: How many connections have been established: 1 after the first, 2 after the
        first reconnect, and so on.
      reconnects: How many times an established connection was lost (each one starts a
        reconnect loop).
      callback_errors: How many exceptions ``on_message`` and ``on_connect`` raised (logged and
        otherwise ignored).
      messages_received: How many PUBLISH messages the broker delivered, on every connection
        (the answer-path probe takes any of them as proof that the subscriptions deliver).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        on_message: Callable[[str, bytes], None],
        on_connect: Callable[[int], None] | None,
        username: str,
        password: str,
        keepalive: int,
        reconnect_min_delay: float,
        reconnect_max_delay: float,
        max_inflight: int,
        tls: bool = False,
        tls_ca_file: str | None = None,
        will: LastWill | None = None,
    ) -> None:
        if not 0 < reconnect_min_delay <= reconnect_max_delay:
            raise ValueError("need 0 < reconnect_min_delay <= reconnect_max_delay")
        self.connected = False
        self.generation = 0
        self.reconnects = 0
        self.callback_errors = 0
        self.messages_received = 0
        self._host = host
        self._port = port
        self._client_id = client_id
        self._on_message = on_message
        self._on_connect = on_connect
        self._username = username
        self._password = password
        self._keepalive = keepalive
        self._min_delay = reconnect_min_delay
        self._max_delay = reconnect_max_delay
        self._max_inflight = max_inflight
        self._will = will
        # Made once: loading the CA file is blocking I/O, and a bad file fails here, at once.
        self._ssl_context: ssl.SSLContext | None = None
        if tls or tls_ca_file:
            self._ssl_context = ssl.create_default_context(cafile=tls_ca_file or None)
        # Filters the broker granted, restored after every reconnect (dicts keep their order).
        self._subscriptions: dict[str, int] = {}
        # Exact topics whose messages go to their own handler instead of on_message.
        self._diverted: dict[str, Callable[[str, bytes], None]] = {}
        self._connection: Connection | None = None
        # Replaced by a fresh Event each time the connection is lost.
        self._connected_event = trio.Event()
        self._closing = False
        # Why the last connect attempt failed, for the retry log line.
        self._connect_error = ""

    @property
    def client_id(self) -> str:
        """The client id every connection of this client uses."""
        return self._client_id

    async def wait_connected(self) -> None:
        """Wait until the client is connected with its subscriptions restored.

        Error handling: raises :exc:`trio.ClosedResourceError` if the client is shut down
        before (or while) waiting.
        """
        while not self.connected:
            if self._closing:
                raise trio.ClosedResourceError("MQTT client is closed")
            await self._connected_event.wait()

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe and wait for the broker's SUBACK; the filter is restored on every reconnect.

        If the connection drops before the SUBACK arrives, the subscription is retried on the next
        connection, so this returns only once the broker has granted it.

        Args:
          topic_filter: An MQTT topic filter; ``+`` and ``#`` wildcards allowed.
          qos: The QoS asked for (0, 1 or 2).

        Error handling: raises :exc:`MqttSubscribeError` if the broker refuses the filter or
        grants a lower QoS; paho's :exc:`ValueError` for a malformed filter;
        :exc:`trio.ClosedResourceError` if the client shuts down meanwhile.
        """
        while True:
            await self.wait_connected()
            connection = self._connection
            # Connected implies a live connection object; anything else is a bug in this module.
            assert connection is not None
            try:
                await connection.subscribe([(topic_filter, qos)])
            except ConnectionLost:
                continue
            self._subscriptions[topic_filter] = qos
            return

    async def resubscribe(self) -> bool:
        """Send SUBSCRIBE again, on the live connection, for every filter granted so far.

        The repair for a broker that silently dropped our subscriptions while the connection
        stayed up (amqtt 0.12.1 does when another client connects with our client id).

        Returns:
          True once the broker granted them all again; False if there was no live connection
          or it was lost meanwhile (the next connection restores them anyway).

        Error handling: raises :exc:`MqttSubscribeError` if the broker now refuses a filter.
        """
        connection = self._connection
        if not self.connected or connection is None:
            return False
        if not self._subscriptions:
            return True
        try:
            await connection.subscribe(list(self._subscriptions.items()))
        except ConnectionLost:
            return False
        return True

    def drop_connection(self, reason: str) -> None:
        """Close the live connection (sending DISCONNECT) and reconnect as after any loss.

        Counted in ``reconnects`` and logged with ``reason``; a no-op while disconnected.
        """
        connection = self._connection
        if connection is not None:
            connection.mark_lost(reason)

    def divert(self, topic: str, handler: Callable[[str, bytes], None] | None) -> None:
        """Hand messages on exactly ``topic`` to ``handler(topic, payload)``, not ``on_message``.

        ``None`` removes the diversion. Errors of ``handler`` are logged and counted in
        ``callback_errors`` like those of ``on_message``.
        """
        if handler is None:
            self._diverted.pop(topic, None)
        else:
            self._diverted[topic] = handler

    def publish(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False) -> bool:
        """Hand a message to paho and wake the writer task; never blocks.

        Args:
          topic: The topic to publish to (no wildcards).
          payload: The message body.
          qos: 0 or 1 (2 works but nothing here needs it).
          retain: Ask the broker to keep it for future subscribers (an empty retained payload
            clears what the topic retains).

        Returns:
          True if the message was queued on the current connection, False if the client is not
          connected (nothing is queued; the caller decides whether to republish, typically from
          ``on_connect``). A True does not mean the broker has it: if the connection drops before
          the PUBACK, the message is lost with the connection.

        Error handling: raises :exc:`MqttError` for any other paho error code, and paho's
        :exc:`ValueError` for an invalid topic or an oversized payload.
        """
        connection = self._connection
        if not self.connected or connection is None:
            return False
        rc = connection.paho.publish_fast(topic, payload, qos, retain)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return True
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return False
        raise MqttError(f"publish to {topic!r} failed: {paho.error_string(rc)}")

    def publish_tracked(
        self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False
    ) -> Acknowledgement | None:
        """:meth:`publish` (``retain`` too), telling afterwards whether the broker
        acknowledged the message.

        Returns:
          None where :meth:`publish` returns False; otherwise an object whose
          ``is_published()`` turns True when the broker's PUBACK arrives (QoS 1).

        Error handling: as :meth:`publish`.
        """
        connection = self._connection
        if not self.connected or connection is None:
            return None
        info = connection.paho.publish(topic, payload, qos, retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return info
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return None
        raise MqttError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")

    async def publish_when_connected(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Wait until connected, then :meth:`publish`.

        Error handling: as :meth:`publish`, plus :exc:`trio.ClosedResourceError` if the client
        shuts down while waiting.
        """
        while True:
            await self.wait_connected()
            if self.publish(topic, payload, qos):
                return

    # -- supervision ------------------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve, and reconnect forever; report ``started`` after the first connection.

        Error handling: connection failures are retried with backoff. A subscription that the
        broker granted before but refuses after a reconnect raises :exc:`MqttSubscribeError`,
        which crashes the client: running without it would silently lose messages.
        """
        failures = 0
        started = False
        while not self._closing:
            connection = await open_connection(self)
            if connection is not None:
                was_established = False
                try:
                    async with trio.open_nursery() as nursery:
                        connection.scope = nursery.cancel_scope
                        nursery.start_soon(connection.read_loop)
                        nursery.start_soon(connection.write_loop)
                        if await self._handshake(connection):
                            was_established = True
                            failures = 0
                            if not started:
                                started = True
                                task_status.started()
                            await connection.misc_loop()
                        nursery.cancel_scope.cancel()
                finally:
                    if was_established and connection.paho.socket() is not None:
                        # Leaving a live connection (client closing, or cancelled from outside):
                        # say goodbye. Shielded: we may be running inside a cancelled scope.
                        with trio.move_on_after(_DISCONNECT_TIMEOUT, shield=True):
                            await connection.send_disconnect()
                    connection.close()
                if self._closing:
                    return
                if was_established:
                    self.reconnects += 1
                    log.warning(
                        "MQTT %s: connection to %s:%d lost (%s); reconnecting",
                        self._client_id,
                        self._host,
                        self._port,
                        connection.lost_reason,
                    )
                    await trio.sleep(self._backoff_delay(failures))
                    continue
            failures += 1
            # The first failure of a streak is worth a warning; the following ones only repeat it.
            level = logging.WARNING if failures == 1 else logging.DEBUG
            log.log(
                level,
                "MQTT %s: cannot connect to %s:%d (%s, attempt %d); retrying",
                self._client_id,
                self._host,
                self._port,
                connection.lost_reason if connection else self._connect_error,
                failures,
            )
            await trio.sleep(self._backoff_delay(failures))

    async def _handshake(self, connection: Connection) -> bool:
        """Wait until the connection is established (see Connection._on_connack); False if not.

        Error handling: raises :exc:`MqttSubscribeError` if the broker refuses a subscription
        it granted before.
        """
        with trio.move_on_after(_HANDSHAKE_TIMEOUT):
            await connection.established.wait()
            if connection.restore_error is not None:
                raise connection.restore_error
            return True
        connection.mark_lost("broker did not answer CONNECT/SUBSCRIBE in time")
        return False

    def _announce(self, connection: Connection) -> None:
        """Make ``connection`` the live one; runs inside paho's CONNACK or SUBACK callback."""
        self._connection = connection
        self.generation += 1
        self.connected = True
        self._connected_event.set()
        if self.generation > 1:
            log.info(
                "MQTT %s: reconnected to %s:%d (generation %d)",
                self._client_id,
                self._host,
                self._port,
                self.generation,
            )
        if self._on_connect is not None:
            try:
                self._on_connect(self.generation)
            except Exception:
                self.callback_errors += 1
                log.exception("MQTT %s: on_connect callback raised", self._client_id)

    def _connection_lost(self, connection: Connection) -> None:
        """Called by a connection the moment it is lost, so publish() stops using it at once."""
        if self._connection is not connection:
            return
        self._connection = None
        if self.connected:
            self.connected = False
            self._connected_event = trio.Event()

    def _backoff_delay(self, failures: int) -> float:
        # Jitter from the very first retry: after a broker restart, a thousand device clients
        # must not all reconnect in the same millisecond.
        ceiling = min(self._max_delay, self._min_delay * 2 ** min(failures + 1, 30))
        return random.uniform(self._min_delay, ceiling)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        self.messages_received += 1
        try:
            self._diverted.get(topic, self._on_message)(topic, payload)
        except Exception:
            # A bug in one handler must not cost every device its connection.
            self.callback_errors += 1
            log.exception("MQTT %s: on_message raised for topic %r", self._client_id, topic)

    async def _aclose(self) -> None:
        """Stop reconnecting, and let _run send DISCONNECT on the live connection if any.

        A clean DISCONNECT tells the broker this was intended (no "socket error" in its log, no
        will message), instead of letting it discover a reset socket.
        """
        self._closing = True
        self.connected = False
        # Wake wait_connected() callers so they see the client is closed.
        self._connected_event.set()
        connection = self._connection
        if connection is None or connection.scope is None:
            # Between connections: nothing to say goodbye on; cancelling _run is enough.
            return
        connection.scope.cancel()
        # Shielded: the body of `async with` may have been cancelled, and this wait is bounded.
        with trio.move_on_after(_DISCONNECT_TIMEOUT * 2, shield=True):
            await connection.closed.wait()
