"""How our amqtt broker accepts TCP connections (fixes 8, 11 and 13 of
:mod:`pm.broker.amqtt._broker`, which has the whole list and the pinning policy).

Fix 8, a listen backlog for fleets: amqtt listens with asyncio's default backlog of 100, which
overflowed when thousands of devices connected at once; here it is :data:`LISTEN_BACKLOG`.

Fix 11, one write per connection and loop turn: amqtt sends every packet with its own system
call; here each connection writes through a
:class:`pm.broker.amqtt._writes.CoalescingStreamWriter`, so the packets it is sent in one turn
of the event loop go together.

Fix 13, hot packets taken where they are read: each connection is read by a
:class:`pm.broker.amqtt._incoming.ConnectionProtocol` instead of asyncio's ``StreamReader``, so
the PUBLISH and PUBACK packets of a read are handled in ``data_received`` without waking the
connection's reader task.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from typing import Any

from amqtt.contexts import ListenerType

from ._incoming import ConnectionProtocol, IncomingBytes
from ._routing import RoutingBroker
from ._writes import CoalescingStreamWriter, WriteCoalescer

# Connections the kernel completes and queues before the broker accepts them (fix 8). asyncio's
# default, which amqtt keeps, is 100: when a fleet reconnects at once (a broker restart) or a
# busy broker accepts late, further SYNs are dropped and each device retries 1, 3, 7 s later.
# Linux caps the figure at net.core.somaxconn (4096 by default since Linux 5.4).
LISTEN_BACKLOG = 4096


class ListeningBroker(RoutingBroker):
    """amqtt's broker with its TCP listeners' backlog, readers and writers replaced (fixes 8,
    11 and 13).

    Error handling: as amqtt's (a listener that cannot bind fails ``start``; a connection's
    errors are handled by its protocol handler).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One for every connection: a single flush callback per loop turn (fix 11).
        self._write_coalescer = WriteCoalescer()

    async def _create_server_instance(
        self,
        listener_name: str,
        listener_type: ListenerType,
        address: str | None,
        port: int,
        ssl_context: ssl.SSLContext | None,
    ) -> Any:  # noqa: ANN401 - asyncio.Server, or amqtt's websockets server
        # amqtt 0.12.1's Broker._create_server_instance, TCP case, with LISTEN_BACKLOG and
        # asyncio.start_server's protocol replaced by ConnectionProtocol (fix 13).
        if listener_type != ListenerType.TCP:
            return await super()._create_server_instance(
                listener_name, listener_type, address, port, ssl_context
            )
        loop = asyncio.get_running_loop()
        connected = functools.partial(self.stream_connected, listener_name=listener_name)
        return await loop.create_server(
            lambda: ConnectionProtocol(connected, loop),
            address,
            port,
            reuse_address=True,
            ssl=ssl_context,
            backlog=LISTEN_BACKLOG,
        )

    async def stream_connected(
        self,
        reader: IncomingBytes,  # type: ignore[override]
        writer: asyncio.StreamWriter,
        listener_name: str,
    ) -> None:
        # amqtt 0.12.1's Broker.stream_connected with our reader (fix 13) and the coalescing
        # writer (fix 11).
        await self._client_connected(
            listener_name, reader, CoalescingStreamWriter(writer, self._write_coalescer)
        )
