"""The cheapest WebSocket watcher the benchmark can run: what 1,000 watchers cost the machine
should be the gateway's, not the clients'.

Scenario 6 runs its watchers in the benchmark process, on the same two cores as the gateway,
the broker and the fleet; trio-websocket's clients cost ~2 ms of CPU each per 10k-task job
(~7 MB of ``?tasks=batch`` frames went through wsproto per watcher), CPU the dispatch then
lacked. This client speaks only what a watcher needs, on a plain TCP stream: the handshake
(checking the ``101`` and its ``Sec-WebSocket-Accept``), unmasked server frames walked by
their headers (task messages skipped without being decoded or copied), the job messages
decoded to find the final status, the server's close frame answered (masked, as a client
must). Reading stops there: the server closes the connection.

Used only by the benchmark (:mod:`bench.watchers`, ``--client lean``); the frame walking is
pure and tested against wsproto's frames (``tests/test_bench_lean_watcher.py``).

Error handling: a refused handshake, a wrong accept token, a frame a server may not send (a
masked or fragmented one) or an early end raise :exc:`LeanWatcherError`.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import msgspec
import trio

READ_BYTES = 256 * 1024
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OPCODE_TEXT = 0x1
_OPCODE_CLOSE = 0x8
_FIN = 0x80
_JOB_PREFIX = b'{"type":"job"'
_decode = msgspec.json.Decoder().decode


class LeanWatcherError(Exception):
    """The server did something a watcher's server may not do."""


@dataclass
class FrameWalker:
    """Server frames walked by their headers: job messages kept, other messages counted.

    ``feed`` takes the bytes as they come; ``jobs`` holds the job messages (bytes) not taken
    yet, ``messages`` counts every text message, ``close`` is the close frame's payload once
    it came.
    """

    messages: int = 0
    jobs: list[bytes] = field(default_factory=list)
    close: bytes | None = None
    _buffer: bytearray = field(default_factory=bytearray)
    # Payload bytes of the current (skipped) frame still to come.
    _skipping: int = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Walk the frames in ``data``: walked where they lie, only a frame's beginning cut
        off at the end of ``data`` (a header, or a job message) is copied for the next call;
        the rest of a task message is skipped as it comes, never copied. ``data`` may be
        reused by the caller once this returns."""
        view = memoryview(data)
        if self._skipping:
            taken = min(self._skipping, len(view))
            self._skipping -= taken
            view = view[taken:]
        if self._buffer:
            self._buffer += view
            work: bytearray | memoryview = self._buffer
        else:
            work = view
        end = len(work)
        start = 0
        while end - start >= 2 and self.close is None:
            first, second = work[start], work[start + 1]
            if second & 0x80 or not first & _FIN:
                raise LeanWatcherError("a masked or fragmented server frame")
            length = second & 0x7F
            header = 2
            if length == 126:
                header = 4
            elif length == 127:
                header = 10
            if end - start < header:
                break
            if header > 2:
                length = int.from_bytes(work[start + 2 : start + header], "big")
            opcode = first & 0x0F
            body = start + header
            available = end - body
            if opcode == _OPCODE_TEXT:
                if available < min(len(_JOB_PREFIX), length):
                    break  # not enough yet to tell a job message from a task message
                if work[body : body + len(_JOB_PREFIX)] != _JOB_PREFIX:
                    # A task message: counted and skipped, never copied.
                    self.messages += 1
                    if available < length:
                        self._skipping = length - available
                        start = end
                        break
                    start = body + length
                    continue
            if available < length:
                break
            payload = bytes(work[body : body + length])
            start = body + length
            if opcode == _OPCODE_TEXT:
                self.messages += 1
                self.jobs.append(payload)
            elif opcode == _OPCODE_CLOSE:
                self.close = payload
        self._buffer = bytearray(work[start:])


async def watch(
    url: str, connected: Callable[[], None] = lambda: None, connect_timeout: float = 120.0
) -> tuple[str | None, int]:
    """Watch ``url`` (``ws://host:port/jobs/{id}/ws?...``) to the end: the last job status
    seen and the number of messages received. ``connected`` is called once the handshake
    is answered."""
    parts = urlsplit(url)
    # A numeric address (the benchmark's): one socket and its connect, without
    # open_tcp_stream's name lookup and happy-eyeballs nursery (a third of this client's CPU).
    sock = trio.socket.socket()
    try:
        with trio.fail_after(connect_timeout):
            await sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    except BaseException:
        sock.close()
        raise
    stream = trio.SocketStream(sock)
    async with stream:
        key = base64.b64encode(os.urandom(16))
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        await stream.send_all(
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        received = b""
        with trio.fail_after(connect_timeout):
            while b"\r\n\r\n" not in received:
                chunk = await stream.receive_some(READ_BYTES)
                if not chunk:
                    raise LeanWatcherError(f"closed during the handshake: {received[:200]!r}")
                received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        expected = base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID).digest())
        if not head.startswith(b"HTTP/1.1 101 ") or expected not in head:
            raise LeanWatcherError(f"handshake refused: {head[:200]!r}")
        connected()
        walker = FrameWalker()
        walker.feed(rest)
        status: str | None = None
        # One buffer for every read: a read allocates nothing (receive_some allocates its
        # size at each call).
        buffer = bytearray(READ_BYTES)
        while True:
            for message in walker.jobs:
                job = _decode(message)
                status = job.get("job", {}).get("status")
            walker.jobs.clear()
            if walker.close is not None:
                try:
                    await stream.send_all(_close_frame(walker.close[:2]))
                except trio.BrokenResourceError:
                    pass  # the server closed first
                return status, walker.messages
            received_bytes = await sock.recv_into(buffer)
            if not received_bytes:
                raise LeanWatcherError("the server closed without a close frame")
            walker.feed(memoryview(buffer)[:received_bytes])


def _close_frame(code: bytes) -> bytes:
    """The client's answer to a close frame: the same code, masked with a zero mask."""
    return bytes((_FIN | _OPCODE_CLOSE, 0x80 | len(code))) + bytes(4) + code
