"""``RawClient``: one MQTT connection driven byte by byte (packets of ``mqtt_packets``), for
tests that must see exactly what a broker does to a connection: no client library reconnects,
pings or retries behind the test's back."""

from __future__ import annotations

from typing import Any, Protocol

import trio

from tests.integration.mqtt_packets import connect_packet

PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"


class BrokerAddress(Protocol):
    """Where a broker listens (an ``EmbeddedBroker``, a ``MosquittoBroker``)."""

    host: str
    port: int


class RawClient:
    """One MQTT connection driven byte by byte: it never reconnects or pings by itself."""

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.stream = stream

    @classmethod
    async def connect(cls, broker: BrokerAddress, client_id: str, **options: Any) -> RawClient:
        """Open a TCP connection and send CONNECT (``options``: those of ``connect_packet``)."""
        client = cls(await trio.open_tcp_stream(broker.host, broker.port))
        await client.stream.send_all(connect_packet(client_id, **options))
        return client

    @classmethod
    async def connect_unix(cls, path: str, client_id: str, **options: Any) -> RawClient:
        """The same through a Unix socket listener."""
        client = cls(await trio.open_unix_socket(path))
        await client.stream.send_all(connect_packet(client_id, **options))
        return client

    async def receive_exactly(self, size: int) -> bytes:
        """``size`` bytes, or fewer if the broker closed the connection first."""
        data = b""
        while len(data) < size:
            chunk = await self.stream.receive_some(size - len(data))
            if not chunk:
                break
            data += chunk
        return data

    async def connack(self) -> int:
        packet = await self.receive_exactly(4)
        assert packet[:2] == b"\x20\x02", packet
        return packet[3]

    async def closed_by_broker(self) -> bool:
        """Wait until the broker closes the connection (EOF or reset); True then."""
        try:
            while await self.stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass
        return True

    async def ping(self) -> None:
        await self.stream.send_all(PINGREQ)
        assert await self.receive_exactly(2) == PINGRESP

    async def aclose(self) -> None:
        await self.stream.aclose()
