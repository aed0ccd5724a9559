"""The hostile clients of ``bench.hostile``: what each does, and what the gateway did to it.

All run on trio in the benchmark process, over raw sockets where a well-behaved library
would not misbehave enough (a WebSocket client that never reads, a request never finished)
and over trio-websocket where the WebSocket protocol itself is the weapon (oversized and
garbage messages).
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

# A never-reading client's receive buffer: a few KiB, so the gateway's sends stall as soon as
# its own send buffer is full (the kernel would otherwise take ~128 KiB more per client).
STALLED_RECEIVE_BUFFER = 4096
WEBSOCKET_HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
# Garbage a hostile watcher sends in a loop: not JSON, deep JSON, binary, a big-ish text.
GARBAGE: tuple[str | bytes, ...] = (
    "{{{ not json",
    "[" * 10_000,
    os.urandom(512),
    "x" * 8192,
)


@dataclass
class Fate:
    """What the gateway did to the hostile clients of one kind."""

    connections: int = 0
    # Seconds from connecting to the gateway's close, of each connection it closed.
    closed_after: list[float] = field(default_factory=list)
    # How each closed connection ended: "closed", "reset", a WebSocket close code, a status.
    endings: Counter[str] = field(default_factory=Counter)
    messages_sent: int = 0

    def closed(self, opened: float, ending: str) -> None:
        self.closed_after.append(time.monotonic() - opened)
        self.endings[ending] += 1

    def summary(self) -> str:
        endings = ", ".join(f"{count} {ending}" for ending, count in self.endings.most_common())
        if not self.closed_after:
            return f"{self.connections} connections, none closed by the gateway"
        closed = sorted(self.closed_after)
        median = closed[len(closed) // 2]
        text = (
            f"{self.connections} connections; closed after {median:.1f} s median, "
            f"{closed[-1]:.1f} s max: {endings}"
        )
        if self.messages_sent:
            text += f"; {self.messages_sent} messages sent"
        return text


def _address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def _connect(base_url: str, receive_buffer: int | None = None) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(_address(base_url))
    return trio.SocketStream(sock)


async def open_never_reading_watcher(base_url: str, path: str) -> trio.SocketStream:
    """A WebSocket on ``path`` whose client completes the handshake, then never reads."""
    stream = await _connect(base_url, STALLED_RECEIVE_BUFFER)
    await stream.send_all(WEBSOCKET_HANDSHAKE.format(path=path).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(1024)
        if not chunk:
            raise RuntimeError(f"handshake refused: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {head.splitlines()[0]!r}")
    return stream


async def slow_loris(base_url: str, byte_interval: float, fate: Fate) -> None:
    """Sends a request line and headers one byte every ``byte_interval`` seconds, never
    their end; reconnects whenever the gateway closes (a persistent attacker). Runs until
    cancelled."""
    while True:
        stream = await _connect(base_url)
        fate.connections += 1
        opened = time.monotonic()
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            ending = await _trickle(stream, byte_interval)
        fate.closed(opened, ending)


async def _trickle(stream: trio.SocketStream, byte_interval: float) -> str:
    """One header byte per interval until the gateway answers or closes; how it ended."""
    try:
        while True:
            await stream.send_all(b"x")
            with trio.move_on_after(byte_interval):
                data = await stream.receive_some(4096)
                if not data:
                    return "closed"
                return "answered " + data.split(b"\r\n", 1)[0].decode(errors="replace")
    except trio.BrokenResourceError:
        return "reset"


async def oversized_sender(url: str, message_bytes: int, fate: Fate) -> None:
    """Connects, sends one ``message_bytes`` message, waits for the gateway's close;
    again until cancelled."""
    message = "x" * message_bytes
    while True:
        opened = time.monotonic()
        fate.connections += 1
        try:
            async with open_websocket_url(url) as connection:
                await connection.send_message(message)
                fate.messages_sent += 1
                while True:
                    await connection.get_message()
        except ConnectionClosed as closed:
            fate.closed(opened, f"close {closed.reason.code}")
        except HandshakeError as refused:
            fate.closed(opened, f"handshake {type(refused).__name__}")
            await trio.sleep(0.1)  # refused: do not spin


async def garbage_sender(url: str, interval: float, fate: Fate) -> None:
    """A watcher that sends :data:`GARBAGE` every ``interval`` seconds (reading what it is
    sent meanwhile); reconnects when closed, until cancelled."""
    while True:
        opened = time.monotonic()
        fate.connections += 1
        try:
            async with open_websocket_url(url) as connection:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_drain, connection, nursery.cancel_scope)
                    try:
                        while True:
                            for garbage in GARBAGE:
                                await connection.send_message(garbage)
                                fate.messages_sent += 1
                            await trio.sleep(interval)
                    except ConnectionClosed:
                        nursery.cancel_scope.cancel()
                reason = connection.closed
            fate.closed(opened, f"close {reason.code}" if reason else "closed")
            await trio.sleep(0.1)  # the job ended (close 1000): do not spin
        except HandshakeError as refused:
            fate.closed(opened, f"handshake {type(refused).__name__}")
            await trio.sleep(0.1)


async def _drain(connection: WebSocketConnection, scope: trio.CancelScope) -> None:
    """Reads until the gateway closes, then ends the sender's scope."""
    try:
        while True:
            await connection.get_message()
    except ConnectionClosed:
        scope.cancel()
