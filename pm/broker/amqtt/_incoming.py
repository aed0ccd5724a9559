"""Fix 13 of :mod:`pm.broker.amqtt._broker`: a TCP connection's bytes are read by an asyncio
protocol, and the hot packets are handled in its ``data_received``, without waking a task.

amqtt 0.12.1 reads a connection through an ``asyncio.StreamReader``: every ``recv`` feeds the
reader's buffer and wakes the connection's reader task (a future, a callback, a task step),
which then parses the packet with amqtt's packet classes (several awaits per packet) and starts
another task to handle a PUBLISH. Over one multiplexed connection a ``recv`` carries a burst of
packets and the wake-up is shared; with one connection per device every packet is a ``recv``
and a wake-up of its own (docs/broker.md, "A burst to one connection per device").

Here :class:`ConnectionProtocol` keeps the bytes in :class:`IncomingBytes`. While the
connection's reader loop waits at a packet boundary with nothing buffered, the bytes that
arrive go first to its :class:`HotPacketTaker` (the connection's handler,
:class:`pm.broker.amqtt._hot_packets.HotPacketHandler`), which handles the whole PUBLISH
(QoS 0/1) and PUBACK packets at their front at once; only what it leaves (any other packet, a
packet cut short, or everything while it declines) is buffered and wakes the reader loop,
which reads it through amqtt's own path (``read`` with ``StreamReader.readexactly``'s
meaning).

Order is kept: the taker only takes packets from the front of what was not read yet, and
declines while anything it did not take is pending (see its ``take_hot_packets``).
Back-pressure: reading is paused while more than :data:`PAUSE_READING_AT` bytes wait for the
reader loop, as asyncio's ``StreamReader`` does at twice its 64 KiB limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from amqtt.adapters import ReaderAdapter

# Buffered bytes at which reading is paused until the reader loop has taken them down to
# RESUME_READING_AT (asyncio's StreamReader: 2 x and 1 x its default 64 KiB limit).
PAUSE_READING_AT = 128 * 1024
RESUME_READING_AT = 64 * 1024


class HotPacketTaker(Protocol):
    def take_hot_packets(self, data: bytes | bytearray, position: int) -> int:
        """Handle the hot packets of ``data`` from ``position`` on; where it stopped."""
        ...


class IncomingBytes(ReaderAdapter):
    """What a connection sent and its reader has not read yet; amqtt's reader adapter.

    Error handling: ``read(n)`` raises ``asyncio.IncompleteReadError`` when the connection
    ends before ``n`` bytes (as ``StreamReader.readexactly``, which amqtt's ``read_or_raise``
    turns into the end of the stream); a lost connection reads as its end.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._reading_paused = False
        #: Set by the reader loop while it runs: it takes the hot packets.
        self.hot_packets: HotPacketTaker | None = None
        #: Set by the reader loop before it reads the next packet's first byte; cleared by
        #: the read that returns it (the rest of that packet's header is not a packet start).
        self.at_packet_boundary = False
        #: Whether the transport asked to stop writing (over its high-water mark).
        self.writing_paused = False

    # -- the protocol's side -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        taker = self.hot_packets
        if taker is not None and self.at_packet_boundary and not self._buffer:
            taken = taker.take_hot_packets(data, 0)
            if taken == len(data):
                return
            data = data[taken:]
        self._buffer += data
        self._wake()
        if not self._reading_paused and len(self._buffer) > PAUSE_READING_AT:
            transport = self._transport
            if isinstance(transport, asyncio.ReadTransport):
                transport.pause_reading()
                self._reading_paused = True

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    # -- the reader's side -------------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            while not self._eof:
                await self._wait()
            return self._take(len(self._buffer))
        while len(self._buffer) < n:
            if self._eof:
                raise asyncio.IncompleteReadError(self._take(len(self._buffer)), n)
            await self._wait()
        return self._take(n)

    def _take(self, n: int) -> bytes:
        self.at_packet_boundary = False
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._resume_reading()
        return data

    def take_hot_packets(self) -> None:
        """Let the taker handle the hot packets at the front of what is buffered."""
        taker = self.hot_packets
        if taker is not None and self._buffer:
            taken = taker.take_hot_packets(self._buffer, 0)
            if taken:
                del self._buffer[:taken]
                self._resume_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and len(self._buffer) <= RESUME_READING_AT:
            self._read_on()

    def _read_on(self) -> None:
        self._reading_paused = False
        transport = self._transport
        if isinstance(transport, asyncio.ReadTransport) and not transport.is_closing():
            transport.resume_reading()

    async def _wait(self) -> None:
        if self._reading_paused:
            # The reader needs more than is buffered (a packet larger than PAUSE_READING_AT):
            # read on, as asyncio's StreamReader does when a read waits.
            self._read_on()
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class ConnectionProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, its reading replaced by :class:`IncomingBytes` (the
    ``StreamWriter`` and its flow control are asyncio's own).

    Error handling: as asyncio's: an exception raised in ``data_received`` (a bug in a hot
    packet's handling) closes this connection only, logged by asyncio.
    """

    def __init__(
        self,
        connected: Callable[[IncomingBytes, asyncio.StreamWriter], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.incoming = IncomingBytes()
        incoming = self.incoming

        def connected_with_incoming(
            _unused: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> Awaitable[None]:
            return connected(incoming, writer)

        # The StreamReader asyncio's writer is given is never fed: its drain() still reads
        # the connection's loss from it (connection_lost below).
        super().__init__(asyncio.StreamReader(loop=loop), connected_with_incoming, loop=loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.incoming.connection_made(transport)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.incoming.data_received(data)

    def eof_received(self) -> bool:
        self.incoming.feed_eof()
        return bool(super().eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self.incoming.feed_eof()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        self.incoming.writing_paused = True
        super().pause_writing()

    def resume_writing(self) -> None:
        self.incoming.writing_paused = False
        super().resume_writing()
