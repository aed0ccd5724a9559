"""An MQTT 3.1.1 client for trio: paho-mqtt driven by trio's I/O waits, no threads at steady state.

paho does the protocol (packet codec, QoS 1 bookkeeping, keepalive); this module does the I/O.
Once connected, one task calls ``loop_read()`` whenever the socket is readable, another calls
``loop_write()`` whenever paho has queued bytes (paho tells us through its
``on_socket_register_write`` callback), and the supervising task calls ``loop_misc()`` four
times per keepalive period. paho's callbacks therefore run on the trio thread, between checkpoints,
which is what lets :meth:`MqttClient.publish` be a plain synchronous call. Only the blocking TCP
connect runs in a worker thread.

Restart policy: every connection uses a fresh paho client with a clean session. When the
connection is lost (socket error, broker gone, keepalive timeout) the client logs it once,
reconnects forever with exponential backoff and jitter, re-subscribes to every filter that
:meth:`MqttClient.subscribe` ever granted, and only then reports itself connected and calls
``on_connect(generation)``. QoS 1 messages that were in flight when the connection dropped are
*not* resent by this module: republishing them is the caller's decision (the gateway does it
from ``on_connect``), which avoids a second, hidden copy.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

# How long the broker has to answer CONNECT with CONNACK and the restored SUBSCRIBE with SUBACK
# before we give up on that connection and try again.
_HANDSHAKE_TIMEOUT = 10.0
# On exit, how long we wait for our DISCONNECT to leave before closing the socket regardless.
_DISCONNECT_TIMEOUT = 1.0
# paho's keepalive bookkeeping only advances when loop_misc() is called. Four calls per
# keepalive period send each PINGREQ at most 1.25 periods after the last packet out (brokers
# allow 1.5) and notice a missing PINGRESP at most a quarter period late. (A fixed 1 s period
# woke a simulated fleet of 10,000 connections 10,000 times a second: ~0.6 of a core.)
_MISC_CALLS_PER_KEEPALIVE = 4
# With keepalive off (0) loop_misc() has nothing to time.
_MISC_INTERVAL_WITHOUT_KEEPALIVE = 60.0
# A burst of small packets arrives in one TCP segment: read up to this many per readiness
# wake-up instead of paying a scheduler round trip each, but yield eventually so one busy client
# cannot starve the other clients living in the same trio process.
_MAX_PACKETS_PER_WAKEUP = 256


# paho reads every packet with at least three recv() calls (type byte, each length byte, the
# body); _ReadAheadClient serves them from one read of up to this many bytes.
_READ_AHEAD_BYTES = 65536


class _ReadAheadClient(paho.Client):
    """paho's client, reading the socket ahead, and without per-topic callbacks.

    Three or four syscalls per packet (with our pending-bytes peek) were ~8% of the
    gateway's CPU under load; one read now serves every packet of a burst. Overrides paho's
    private ``_sock_recv`` and ``_handle_on_message`` (paho is pinned;
    tests/integration/test_mqtt.py checks the source of what this relies on).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_ahead = b""
        self._read_position = 0

    @property
    def read_ahead_pending(self) -> bool:
        """Bytes already read from the socket that paho has not consumed yet."""
        return self._read_position < len(self._read_ahead)

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        # paho walks its per-topic callback tree for every incoming message (~4% of the
        # gateway's CPU); we register no per-topic callbacks, so it would always find none.
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise NotImplementedError("per-topic callbacks are skipped by _handle_on_message")

    def _sock_recv(self, bufsize: int) -> bytes:
        start = self._read_position
        if start >= len(self._read_ahead):
            # Raises BlockingIOError when nothing is there, and returns b"" at EOF, as before.
            data = super()._sock_recv(_READ_AHEAD_BYTES)
            if len(data) <= bufsize:
                return data
            self._read_ahead, start = data, 0
        end = start + bufsize
        self._read_position = end
        return self._read_ahead[start:end]


class MqttError(Exception):
    """paho refused an operation for a reason other than "not connected"."""


class MqttSubscribeError(MqttError):
    """The broker refused a subscription, or granted a lower QoS than asked for."""


class _ConnectionLost(Exception):
    """Internal: the connection an operation was using went away; try again on the next one."""


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
    ) -> None:
        if not 0 < reconnect_min_delay <= reconnect_max_delay:
            raise ValueError("need 0 < reconnect_min_delay <= reconnect_max_delay")
        self.connected = False
        self.generation = 0
        self.reconnects = 0
        self.callback_errors = 0
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
        # Made once: loading the CA file is blocking I/O, and a bad file fails here, at once.
        self._ssl_context: ssl.SSLContext | None = None
        if tls or tls_ca_file:
            self._ssl_context = ssl.create_default_context(cafile=tls_ca_file or None)
        # Filters the broker granted, restored after every reconnect (dicts keep their order).
        self._subscriptions: dict[str, int] = {}
        self._connection: _Connection | None = None
        # Replaced by a fresh Event each time the connection is lost.
        self._connected_event = trio.Event()
        self._closing = False
        # Why the last connect attempt failed, for the retry log line.
        self._connect_error = ""

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
            except _ConnectionLost:
                continue
            self._subscriptions[topic_filter] = qos
            return

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
        rc = connection.paho.publish(topic, payload, qos, retain).rc
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return True
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return False
        raise MqttError(f"publish to {topic!r} failed: {paho.error_string(rc)}")

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
            connection = await self._connect_socket()
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

    async def _connect_socket(self) -> _Connection | None:
        """Open the TCP connection and send CONNECT; None (reason in _connect_error) on failure."""
        client = _ReadAheadClient(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=True,
            protocol=paho.MQTTv311,
        )
        if self._username:
            client.username_pw_set(self._username, self._password)
        # paho's default of 20 in flight caps request throughput; 0 = no cap on queued messages.
        client.max_inflight_messages_set(self._max_inflight)
        client.max_queued_messages_set(0)
        if self._ssl_context is not None:
            # Verifies the certificate chain and the host name; ssl.SSLError (an OSError) from
            # the handshake is a failed attempt like any other.
            client.tls_set_context(self._ssl_context)
        try:
            # The only blocking call: DNS + TCP (+ TLS) handshake. Abandoning it on cancel leaves
            # at most one half-open socket to a client object nobody references.
            await trio.to_thread.run_sync(
                client.connect, self._host, self._port, self._keepalive, abandon_on_cancel=True
            )
        except OSError as exc:
            self._connect_error = f"{type(exc).__name__}: {exc}"
            return None
        sock = client.socket()
        assert isinstance(sock, socket.socket)
        # Without it, Nagle + delayed ACK hold each small packet ~40 ms: QoS 1 request/response
        # drops to ~22 round trips/s.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(self, client, sock)

    async def _handshake(self, connection: _Connection) -> bool:
        """Wait until the connection is established (see _Connection._on_connack); False if not.

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

    def _announce(self, connection: _Connection) -> None:
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

    def _connection_lost(self, connection: _Connection) -> None:
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
        try:
            self._on_message(topic, payload)
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


class _SubackWaiter:
    __slots__ = ("done", "reason_codes")

    def __init__(self) -> None:
        self.done = trio.Event()
        # None once done means the connection was lost before the SUBACK came.
        self.reason_codes: list[ReasonCode] | None = None


class _Connection:
    """One TCP connection: a fresh paho client, its socket, and the loops that drive them.

    Callbacks are bound to this object rather than to :class:`MqttClient`, so a late callback
    from a dead connection can never disturb the next one.
    """

    def __init__(self, owner: MqttClient, client: _ReadAheadClient, sock: socket.socket) -> None:
        self.owner = owner
        self.paho = client
        self.sock = sock
        self.scope: trio.CancelScope | None = None
        self.write_wanted = trio.Event()
        self.connack_received = trio.Event()
        self.connack: ReasonCode | None = None
        self.lost = trio.Event()
        self.closed = trio.Event()
        self.lost_reason = "socket closed"
        # Set once CONNACK is accepted and the subscriptions are restored (or failed to be).
        self.established = trio.Event()
        self.restore_error: MqttSubscribeError | None = None
        # (mid, filters) of the SUBSCRIBE that restores the subscriptions, until its SUBACK.
        self.restoring: tuple[int, list[tuple[str, int]]] | None = None
        self.suback_waiters: dict[int, _SubackWaiter] = {}
        client.on_connect = self._on_connack
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_suback
        client.on_socket_register_write = self._on_register_write
        client.on_socket_close = self._on_socket_close

    # -- I/O loops (run in the connection's nursery) ----------------------------------------

    async def read_loop(self) -> None:
        while True:
            try:
                if self.paho.read_ahead_pending or _has_decrypted_bytes(self.sock):
                    # The last wake-up left bytes read ahead, or (TLS) whole records decrypted
                    # in the SSL object, which the kernel does not know about: waiting for the
                    # socket would stall.
                    await trio.lowlevel.checkpoint()
                else:
                    await trio.lowlevel.wait_readable(self.sock)
            except trio.ClosedResourceError:
                self.mark_lost("socket closed")
                return
            for _ in range(_MAX_PACKETS_PER_WAKEUP):
                # loop_read() reads one packet when nothing is in flight, and its return code
                # cannot tell "read a packet" from "nothing left": peek to know whether to go on.
                rc = self.paho.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._lost_with(rc)
                    return
                if not self.paho.read_ahead_pending and not _has_pending_bytes(self.sock):
                    break

    async def write_loop(self) -> None:
        while True:
            if self.paho.want_write():
                # paho sends each queued packet with its own send(): corked, the kernel packs
                # them into full segments instead of pushing one loopback/TCP segment per
                # packet through the stack (that was ~16% of the gateway's CPU in a 10k-task
                # burst). Uncorking flushes at once, so a lone packet is not delayed.
                _set_cork(self.sock, True)
                try:
                    rc = self.paho.loop_write()
                finally:
                    _set_cork(self.sock, False)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._lost_with(rc)
                    return
                if self.paho.want_write():
                    # Kernel send buffer full: wait for it to drain, then write the rest.
                    try:
                        await trio.lowlevel.wait_writable(self.sock)
                    except trio.ClosedResourceError:
                        self.mark_lost("socket closed")
                        return
                    continue
            # Nothing pending. No checkpoint since want_write() was checked, so a packet queued
            # from now on fires on_socket_register_write and sets this new Event.
            self.write_wanted = trio.Event()
            await self.write_wanted.wait()

    async def misc_loop(self) -> None:
        keepalive = self.owner._keepalive
        interval = (
            keepalive / _MISC_CALLS_PER_KEEPALIVE
            if keepalive > 0
            else _MISC_INTERVAL_WITHOUT_KEEPALIVE
        )
        # Spread the calls of many connections opened together over the interval.
        await trio.sleep(random.uniform(0, interval))
        while True:
            if self.paho.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # The one failure loop_misc() reports: no PINGRESP within the keepalive.
                self._lost_with(MQTTErrorCode.MQTT_ERR_KEEPALIVE)
                return
            await trio.sleep(interval)

    async def subscribe(self, filters: list[tuple[str, int]]) -> None:
        """Send one SUBSCRIBE for ``filters`` and check the SUBACK.

        Error handling: :exc:`_ConnectionLost` if the connection dies first;
        :exc:`MqttSubscribeError` naming each refused or downgraded filter.
        """
        mid = self._send_subscribe(filters)
        if mid is None:
            raise _ConnectionLost
        waiter = _SubackWaiter()
        self.suback_waiters[mid] = waiter
        try:
            await waiter.done.wait()
        finally:
            del self.suback_waiters[mid]
        if waiter.reason_codes is None:
            raise _ConnectionLost
        error = _refusal(filters, waiter.reason_codes)
        if error is not None:
            raise error

    def _send_subscribe(self, filters: list[tuple[str, int]]) -> int | None:
        """Queue a SUBSCRIBE; its message id, or None if the connection is gone."""
        rc, mid = self.paho.subscribe(filters)
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN or mid is None:
            return None
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"subscribe failed: {paho.error_string(rc)}")
        return mid

    def mark_lost(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        self.owner._connection_lost(self)
        for waiter in self.suback_waiters.values():
            waiter.done.set()
        if self.scope is not None:
            self.scope.cancel()

    def _lost_with(self, rc: MQTTErrorCode) -> None:
        # Usually paho has called on_disconnect already and this changes nothing.
        self.mark_lost(paho.error_string(rc))

    async def send_disconnect(self) -> None:
        """Send DISCONNECT after whatever paho still has queued; paho then closes the socket.

        Call only once this connection's tasks are cancelled: it writes on its own, and trio
        allows one task at a time to wait for the socket to be writable.
        """
        self.paho.disconnect()
        while self.paho.socket() is not None and self.paho.want_write():
            if self.paho.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            if self.paho.socket() is not None and self.paho.want_write():
                try:
                    await trio.lowlevel.wait_writable(self.sock)
                except trio.ClosedResourceError:
                    return

    def close(self) -> None:
        """Close the socket if paho has not already; idempotent."""
        self.mark_lost(self.lost_reason)
        sock = self.paho.socket()
        if sock is not None:
            # paho keeps its reference to the socket and closes it again from Client.__del__,
            # possibly outside trio: detach the callback that calls into trio first.
            self.paho.on_socket_close = None
            trio.lowlevel.notify_closing(sock)
            sock.close()
        self.closed.set()

    # -- paho callbacks (run synchronously inside loop_read/loop_write/loop_misc) -----------

    def _on_connack(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            # The broker closes the socket next; the reason is what the log line needs.
            self.mark_lost(f"broker refused the connection: {reason}")
            return
        subscriptions = list(self.owner._subscriptions.items())
        if not subscriptions:
            self._establish()
            return
        # Restore the subscriptions from here, synchronously, and announce from the SUBACK
        # callback: a PUBLISH right behind the SUBACK in the same read must find the client
        # connected, or an on_message that answers at once would see publish() return False.
        mid = self._send_subscribe(subscriptions)
        if mid is not None:
            self.restoring = (mid, subscriptions)

    def _establish(self) -> None:
        self.owner._announce(self)
        self.established.set()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        # For MQTT 3.1.1 paho reports most losses as "Unspecified error"; say it plainly.
        self.mark_lost("connection lost" if str(reason) == "Unspecified error" else str(reason))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.owner._dispatch(message.topic, message.payload)

    def _on_suback(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        if self.restoring is not None and self.restoring[0] == mid:
            filters = self.restoring[1]
            self.restoring = None
            self.restore_error = _refusal(filters, reason_codes)
            if self.restore_error is not None:
                self.established.set()  # _handshake raises it
            else:
                self._establish()
            return
        waiter = self.suback_waiters.get(mid)
        if waiter is not None:
            waiter.reason_codes = reason_codes
            waiter.done.set()

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self.write_wanted.set()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Our read/write tasks may be parked on this fd in trio's epoll: tell trio before the fd
        # is closed (and possibly reused by the next connection), which wakes them with
        # ClosedResourceError.
        trio.lowlevel.notify_closing(sock)


def _refusal(
    filters: list[tuple[str, int]], reason_codes: list[ReasonCode]
) -> MqttSubscribeError | None:
    """The error to raise if the SUBACK refused or downgraded any filter, else None."""
    refused = [
        f"{topic_filter!r} (asked QoS {qos}, got {code})"
        for (topic_filter, qos), code in zip(filters, reason_codes, strict=True)
        if code.is_failure or code.value < qos
    ]
    if not refused:
        return None
    return MqttSubscribeError("broker refused subscription: " + ", ".join(refused))


def _set_cork(sock: socket.socket, corked: bool) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(corked))
    except OSError:
        pass  # the socket is closed or failed: loop_write() reports that itself


def _has_decrypted_bytes(sock: socket.socket) -> bool:
    """TLS: whether the SSL object holds decrypted bytes not yet read (never, for plain TCP)."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


def _has_pending_bytes(sock: socket.socket) -> bool:
    if _has_decrypted_bytes(sock):
        return True
    try:
        # b"" (EOF) counts as pending: loop_read() must see it to report the loss. For TLS this
        # peeks at the raw socket (SSLSocket.recv refuses flags): encrypted bytes, perhaps only
        # part of a record, which loop_read() then reports as "nothing yet".
        socket.socket.recv(sock, 1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


@asynccontextmanager
async def open_mqtt_client(
    host: str,
    port: int,
    *,
    client_id: str,
    on_message: Callable[[str, bytes], None],
    username: str = "",
    password: str = "",
    keepalive: int = 30,
    reconnect_min_delay: float = 0.1,
    reconnect_max_delay: float = 5.0,
    max_inflight: int = 1000,
    on_connect: Callable[[int], None] | None = None,
    tls: bool = False,
    tls_ca_file: str | None = None,
) -> AsyncIterator[MqttClient]:
    """Connect to an MQTT broker and keep the connection up until the block exits.

    Yields once the first connection is established; until then it retries with backoff
    forever, so bound it with :func:`trio.fail_after` if the broker may be absent. On exit it
    sends DISCONNECT (waiting at most a second for it to leave) and closes the socket.

    Args:
      host, port: The broker's address.
      client_id: MQTT client identifier; must be unique on the broker (a duplicate makes the
        broker drop the older connection).
      on_message: Called as ``on_message(topic, payload)`` on the trio thread for every incoming
        message. Keep it short and non-blocking (hand work to a channel with ``send_nowait``).
      username, password: Credentials; empty username sends none.
      keepalive: MQTT keepalive in seconds; a silent broker is declared lost after one to two
        keepalive periods (plus up to a quarter of one).
      reconnect_min_delay, reconnect_max_delay: Bounds of the jittered exponential backoff.
      max_inflight: QoS 1 messages paho keeps unacknowledged before it queues locally; 0
        for no cap (paho then skips its O(outstanding) scan on every PUBACK).
      on_connect: Called as ``on_connect(generation)`` after every successful connection, once
        the subscriptions are restored (generation 1 is the first connection).
      tls: speak MQTT over TLS, verifying the broker's certificate and host name.
      tls_ca_file: PEM file of the CA certificate(s) trusted for the broker's; ``None`` or
        empty: the system's defaults. Giving one implies ``tls``.

    Returns:
      An async context manager yielding the :class:`MqttClient`.

    Error handling: exceptions raised by ``on_message`` or ``on_connect`` are logged and
    counted in ``client.callback_errors``, never propagated. Connection loss is handled
    internally (see the module docstring). A restored subscription refused after a reconnect
    raises :exc:`MqttSubscribeError` out of the ``async with`` (inside an ExceptionGroup, as
    for any failure of a task in a trio nursery). An unreadable ``tls_ca_file`` raises
    :exc:`OSError` (or :exc:`ssl.SSLError`) before any connection is tried.
    """
    client = MqttClient(
        host,
        port,
        client_id=client_id,
        on_message=on_message,
        on_connect=on_connect,
        username=username,
        password=password,
        keepalive=keepalive,
        reconnect_min_delay=reconnect_min_delay,
        reconnect_max_delay=reconnect_max_delay,
        max_inflight=max_inflight,
        tls=tls,
        tls_ca_file=tls_ca_file,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(client._run)
        try:
            yield client
        finally:
            await client._aclose()
            nursery.cancel_scope.cancel()
