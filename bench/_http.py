"""A lean HTTP/1.1 client for latency figures: h11 on one kept-alive trio socket.

httpx spends ~1-1.5 ms of its own CPU per request on these machines, more than the
gateway's handling of a ``GET /jobs/{id}`` (~0.8 ms): a latency taken with it mostly
measures the client. This one costs a few tens of microseconds per request.
"""

from __future__ import annotations

from types import TracebackType
from urllib.parse import urlsplit

import h11
import trio

_READ_SIZE = 65536


class LeanHttpClient:
    """Sequential requests on one connection (reopened when the server closes it)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"need an http://HOST:PORT url, got {url!r}")
        self._host, self._port = parts.hostname, parts.port
        self._stream: trio.SocketStream | None = None
        self._connection = h11.Connection(h11.CLIENT)

    async def __aenter__(self) -> LeanHttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request and read the whole response: ``(status, body)``."""
        stream = await self._ready_stream()
        connection = self._connection
        headers = [("Host", f"{self._host}:{self._port}"), ("Content-Length", str(len(body)))]
        if body:
            headers.append(("Content-Type", "application/json"))
        data = connection.send(h11.Request(method=method, target=path, headers=headers)) or b""
        if body:
            data += connection.send(h11.Data(data=body)) or b""
        data += connection.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)
        status = 0
        chunks: list[bytes] = []
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(_READ_SIZE))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the server closed the connection mid-response")
        if connection.our_state is h11.DONE and connection.their_state is h11.DONE:
            connection.start_next_cycle()
        else:
            # The server asked to close (hypercorn does after 1,000 requests): reopen next time.
            await self.aclose()
        return status, b"".join(chunks)

    async def _ready_stream(self) -> trio.SocketStream:
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self._host, self._port)
            self._connection = h11.Connection(h11.CLIENT)
        return self._stream
