"""One MQTT connection: a paho client, its socket, and the trio tasks that drive them."""

from __future__ import annotations

import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from ._paho import ReadAheadClient
from ._sockets import has_decrypted_bytes, has_pending_bytes, set_cork

if TYPE_CHECKING:
    from ._client import MqttClient


# With keepalive off (0) loop_misc() has nothing to time.
_MISC_INTERVAL_WITHOUT_KEEPALIVE = 60.0
# A burst of small packets arrives in one TCP segment: read up to this many times per readiness
# wake-up instead of paying a scheduler round trip each, but yield eventually so one busy client
# cannot starve the other clients living in the same trio process.
_MAX_READS_PER_WAKEUP = 256


class MqttError(Exception):
    """paho refused an operation for a reason other than "not connected"."""


class MqttSubscribeError(MqttError):
    """The broker refused a subscription, or granted a lower QoS than asked for."""


class ConnectionLost(Exception):
    """Internal: the connection an operation was using went away; try again on the next one."""


class SubackWaiter:
    __slots__ = ("done", "reason_codes")

    def __init__(self) -> None:
        self.done = trio.Event()
        # None once done means the connection was lost before the SUBACK came.
        self.reason_codes: list[ReasonCode] | None = None


class Connection:
    """One TCP connection: a fresh paho client, its socket, and the loops that drive them.

    Callbacks are bound to this object rather than to :class:`MqttClient`, so a late callback
    from a dead connection can never disturb the next one.
    """

    def __init__(self, owner: MqttClient, client: ReadAheadClient, sock: socket.socket) -> None:
        self.owner = owner
        self.paho = client
        self.sock = sock
        # A read shorter than asked for drained a plain TCP socket (not a TLS one).
        self._short_read_drains = not isinstance(sock, ssl.SSLSocket)
        self.scope: trio.CancelScope | None = None
        self.write_wanted = trio.Event()
        # While the reader handles packets, what they queue waits for the reader to write it.
        self._reading = False
        self._write_after_read = False
        # While the writer waits for room in the kernel's send buffer.
        self._writer_awaits_room = False
        self.lost = trio.Event()
        self.closed = trio.Event()
        self.lost_reason = "socket closed"
        # Set once CONNACK is accepted and the subscriptions are restored (or failed to be).
        self.established = trio.Event()
        self.restore_error: MqttSubscribeError | None = None
        # (mid, filters) of the SUBSCRIBE that restores the subscriptions, until its SUBACK.
        self.restoring: tuple[int, list[tuple[str, int]]] | None = None
        self.suback_waiters: dict[int, SubackWaiter] = {}
        client.on_connect = self._on_connack
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        # The PUBLISH packets ReadAheadClient reads itself (nearly all) skip _on_message.
        client.on_publish_received = owner._dispatch
        client.on_subscribe = self._on_suback
        client.on_socket_register_write = self._on_register_write
        client.on_socket_close = self._on_socket_close

    # -- I/O loops (run in the connection's nursery) ----------------------------------------

    async def read_loop(self) -> None:
        while True:
            try:
                if self.paho.read_ahead_pending or has_decrypted_bytes(self.sock):
                    # The last wake-up left bytes read ahead, or (TLS) whole records decrypted
                    # in the SSL object, which the kernel does not know about: waiting for the
                    # socket would stall.
                    await trio.lowlevel.checkpoint()
                else:
                    await trio.lowlevel.wait_readable(self.sock)
            except trio.ClosedResourceError:
                self.mark_lost("socket closed")
                return
            # What the packets of this wake-up queue (PUBACKs, answers published from
            # on_message) is written from here once they are handled, not by waking the writer
            # task for it: a device answering one request at a time paid a task wake-up per
            # answer for that (a fifth of a simulated fleet's CPU with a connection per device).
            self._reading = True
            self.paho.published = False
            try:
                if not self._read_packets():
                    return
            finally:
                self._reading = False
            if not self._write_after_read:
                continue
            if not self.paho.published:
                # Only PUBACKs: the gateway's answers, handed to tasks that publish next; the
                # writer writes them together (one send() less per read).
                self._write_after_read = False
                self.write_wanted.set()
            elif not self._write_from_reader():
                return

    def _read_packets(self) -> bool:
        """Handle what the socket has now (one wake-up's worth); False if the connection is
        lost."""
        for _ in range(_MAX_READS_PER_WAKEUP):
            # loop_read() handles the packets of one read (paho's reader one packet), and
            # its return code cannot tell "read something" from "nothing left".
            rc = self.paho.loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost_with(rc)
                return False
            if self.paho.read_ahead_pending:
                continue
            # The last read took all there was: readiness says when more comes. A peek
            # here (a syscall) found nothing for most reads of a simulated fleet's
            # connections, one or two requests each.
            if self._short_read_drains and self.paho.socket_drained:
                break
            # Peek to know whether to go on: what arrived meanwhile is handled in this
            # wake-up (a gateway's answers in fewer, larger batches).
            if not has_pending_bytes(self.sock):
                break
        return True

    def _write_from_reader(self) -> bool:
        """Write what the reader's packets queued, without blocking; False if the connection
        is lost. What the kernel cannot take now is left to the writer task, woken for it."""
        self._write_after_read = False
        if self._writer_awaits_room:
            # The writer waits for the kernel's buffer to drain, with bytes of its own ahead
            # of these: it writes them all, in order, once there is room.
            return True
        if not self._write_queued():
            return False
        if self.paho.want_write():
            # The kernel's buffer is full: the writer waits for room and writes the rest.
            # (paho does not call on_socket_register_write again: it did for the first packet.)
            self.write_wanted.set()
        return True

    async def write_loop(self) -> None:
        while True:
            if self.paho.want_write():
                if not self._write_queued():
                    return
                if self.paho.want_write():
                    # Kernel send buffer full: wait for it to drain, then write the rest.
                    self._writer_awaits_room = True
                    try:
                        await trio.lowlevel.wait_writable(self.sock)
                    except trio.ClosedResourceError:
                        self.mark_lost("socket closed")
                        return
                    finally:
                        self._writer_awaits_room = False
                    continue
            # Nothing pending. No checkpoint since want_write() was checked, so a packet queued
            # from now on fires on_socket_register_write and sets this new Event.
            self.write_wanted = trio.Event()
            await self.write_wanted.wait()

    def _write_queued(self) -> bool:
        """What the kernel takes of what is queued now (``write_encoded``); False if the
        connection is lost."""
        # paho sends each queued buffer with its own send(): corked, the kernel packs them into
        # full segments instead of pushing one loopback/TCP segment per packet through the
        # stack (that was ~16% of the gateway's CPU in a 10k-task burst). Uncorking flushes at
        # once, so a lone packet is not delayed. The hot packets are one buffer already
        # (ReadAheadClient): no cork, two syscalls less.
        corked = self.paho.several_writes_queued
        if corked:
            set_cork(self.sock, True)
        try:
            rc = self.paho.write_encoded()
        finally:
            if corked:
                set_cork(self.sock, False)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._lost_with(rc)
            return False
        return True

    async def misc_loop(self) -> None:
        # paho's keepalive bookkeeping only advances when loop_misc() runs, and it acts only
        # once a keepalive has passed since the last packet out, the last bytes in, or an
        # unanswered PINGREQ: sleep until the earliest of those, which every packet moves
        # later. So a PINGREQ leaves exactly one keepalive after the last packet out (brokers
        # allow 1.5) and a missing PINGRESP is noticed on time, at one wake-up per keepalive
        # (the last calls four times per period woke a fleet of 10,000 connections 1,333
        # times a second, busy or idle).
        if self.owner._keepalive <= 0:
            while True:
                await trio.sleep(_MISC_INTERVAL_WITHOUT_KEEPALIVE)
                self.paho.loop_misc()
        while True:
            wait = self.paho.keepalive_due - time.monotonic()  # paho's clock
            if wait > 0:
                await trio.sleep(wait)
                continue
            if self.paho.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # The one failure loop_misc() reports: no PINGRESP within the keepalive.
                self._lost_with(MQTTErrorCode.MQTT_ERR_KEEPALIVE)
                return
            if self.paho.keepalive_due <= time.monotonic():
                # Nothing moved the deadline (paho sent no PINGREQ: one is on its way and
                # answered by nothing yet read); look again a keepalive later at most.
                await trio.sleep(self.owner._keepalive)

    async def subscribe(self, filters: list[tuple[str, int]]) -> None:
        """Send one SUBSCRIBE for ``filters`` and check the SUBACK.

        Error handling: :exc:`ConnectionLost` if the connection dies first;
        :exc:`MqttSubscribeError` naming each refused or downgraded filter.
        """
        mid = self._send_subscribe(filters)
        if mid is None:
            raise ConnectionLost
        waiter = SubackWaiter()
        self.suback_waiters[mid] = waiter
        try:
            await waiter.done.wait()
        finally:
            del self.suback_waiters[mid]
        if waiter.reason_codes is None:
            raise ConnectionLost
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
        if self._reading:
            self._write_after_read = True  # the reader writes it once its packets are handled
        else:
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
