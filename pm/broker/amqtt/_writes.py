"""Fix 11 of :mod:`pm.broker.amqtt._broker`: the packets a connection is sent in one turn of
the event loop leave in one write.

amqtt 0.12.1 writes every packet on its own (``MQTTPacket.to_stream``: ``write`` then
``drain``), and asyncio's socket transport sends at once when its buffer is empty, which on a
connection that keeps up it always is: one ``send()`` system call per packet. Over loopback a
send also runs the receiving side's TCP processing on the sender's CPU, so in a burst the
broker spent 24-38% of its samples in ``_SelectorSocketTransport.write`` (docs/broker.md). A
burst makes many packets for the same connection in one turn (the PUBACKs of every request
read in one ``recv``; over a multiplexed connection the deliveries too), and here they are
joined and handed to the transport once, at the start of the next turn, before any new
socket is read.

Order is kept: a connection's bytes are only ever appended to its own buffer, which is flushed
before its transport is closed. Back-pressure is asyncio's: ``drain`` waits while the
transport is over its high-water mark, and a buffer that reaches :data:`FLUSH_AT_BYTES` within
one turn goes to the transport at once rather than growing.
"""

from __future__ import annotations

import asyncio

from amqtt.adapters import StreamWriterAdapter

# Pending bytes at which a connection's buffer goes to the transport within the turn: asyncio's
# default high-water mark, so a flood meets the transport's flow control instead of growing here.
FLUSH_AT_BYTES = 64 * 1024


class WriteCoalescer:
    """The connections with bytes pending in this turn of the event loop; flushes them all
    with one callback at the start of the next.

    Error handling: a flush never raises (a lost or closing connection's bytes are dropped,
    as asyncio drops any write after the loss), so one connection cannot keep the others'
    bytes back. One callback serves every connection: its cost per turn does not grow with
    the fleet.
    """

    def __init__(self) -> None:
        self._pending: list[CoalescingStreamWriter] = []
        self._flush_scheduled = False

    def add(self, writer: CoalescingStreamWriter) -> None:
        """``writer`` has bytes pending: flush them at the start of the next turn."""
        self._pending.append(writer)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_all)

    def _flush_all(self) -> None:
        self._flush_scheduled = False
        writers, self._pending = self._pending, []
        for writer in writers:
            writer.flush()


class CoalescingStreamWriter(StreamWriterAdapter):
    """amqtt's TCP writer adapter whose ``write`` collects the turn's packets (fix 11).

    Error handling: as amqtt's adapter: a write after :meth:`close` is dropped; ``drain``
    raises what asyncio's raises for a lost connection.
    """

    def __init__(self, writer: asyncio.StreamWriter, coalescer: WriteCoalescer) -> None:
        super().__init__(writer)
        self._coalescer = coalescer
        self._chunks: list[bytes] = []
        self._pending_bytes = 0

    def write(self, data: bytes) -> None:
        if self.is_closed:
            return
        if not self._chunks:
            self._coalescer.add(self)
        self._chunks.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_AT_BYTES:
            self.flush()

    def flush(self) -> None:
        """Hand the pending bytes to the transport in one write (a no-op when none)."""
        if not self._chunks:
            return
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._pending_bytes = 0
        try:
            self._writer.write(data)
        except RuntimeError:
            # asyncio refuses writes after write_eof(): the connection is closing, and its
            # bytes are dropped like those written after a lost connection.
            pass

    async def close(self) -> None:
        # The pending packets (a refused client's CONNACK) go before the EOF.
        self.flush()
        await super().close()
