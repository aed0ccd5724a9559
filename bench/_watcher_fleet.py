"""The benchmark's watchers as a process of their own, on one ``epoll`` loop without trio: what
1,000 watchers cost the machine should be the gateway's, not the benchmark's.

:mod:`bench._lean_watcher` runs each watcher as a trio task in the benchmark process; each of
its reads is a trip through trio's scheduler (a wait for the socket, a task switch), which
cost the clients more CPU than the gateway spent writing to them (``?tasks=batch``: 7.9 CPU
seconds per 10k-task job against the gateway's 4.9, 2026-12-01). Here every watcher is a
socket in one :mod:`selectors` loop: non-blocking connects, at most ``--handshakes`` at a
time, the handshake checked as :mod:`bench._lean_watcher` does, then reads into one reused
buffer walked by its :class:`~bench._lean_watcher.FrameWalker` (task messages skipped
without being copied or decoded, job messages decoded for their status), the server's close
frame answered. Its CPU is its own process's, reported beside the gateway's.

Protocol with the driver (:mod:`bench.watchers`): started before the jobs are posted, it
reads one line from stdin, a JSON list of ``ws://`` URLs (one watcher each), watches them
all to their end and prints one JSON line: the final status each watcher saw last (or None),
the messages each received, and its own CPU seconds (user + system) from the line's
arrival to the end.

Error handling: a refused handshake, a frame a server may not send or an early end count as
that watcher's failure (status None, the reason in ``errors``); the others go on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import msgspec
import trio

from bench._lean_watcher import FrameWalker, LeanWatcherError
from bench._load import FINAL_STATUSES

READ_BYTES = 256 * 1024
# What the process writes once its imports are done.
_READY = b"ready\n"
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_decode = msgspec.json.Decoder().decode


class _Watcher:
    """One watcher's socket and where it is: connecting, reading the answer's head, then
    walking frames."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.key = base64.b64encode(os.urandom(16))
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.request = (
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.sock: socket.socket | None = None
        self.head = b""
        self.walker: FrameWalker | None = None
        self.status: str | None = None
        self.error: str | None = None

    def connect(self) -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(self.address)
        self.sock = sock
        return sock

    def read(self, sock: socket.socket, buffer: bytearray) -> bool:
        """Take what the socket has; True once this watcher is over."""
        received = sock.recv_into(buffer)
        if not received:
            raise LeanWatcherError("the server closed without a close frame")
        data = memoryview(buffer)[:received]
        walker = self.walker
        if walker is None:
            self.head += bytes(data)
            head, found, rest = self.head.partition(b"\r\n\r\n")
            if not found:
                return False
            expected = base64.b64encode(hashlib.sha1(self.key + _ACCEPT_GUID).digest())
            if not head.startswith(b"HTTP/1.1 101 ") or expected not in head:
                raise LeanWatcherError(f"handshake refused: {head[:200]!r}")
            walker = self.walker = FrameWalker()
            data = memoryview(rest)
        walker.feed(data)
        for message in walker.jobs:
            self.status = _decode(message).get("job", {}).get("status")
        walker.jobs.clear()
        if walker.close is None:
            return False
        try:
            code = walker.close[:2]
            # The client's answer to a close frame: the same code, masked with a zero mask.
            sock.send(bytes((0x88, 0x80 | len(code))) + bytes(4) + code)
        except OSError:
            pass  # the server closed first
        return True

    @property
    def handshaken(self) -> bool:
        return self.walker is not None


def watch_all(urls: list[str], handshakes: int) -> dict[str, object]:
    """Every URL watched to its end, at most ``handshakes`` handshakes under way at once."""
    watchers = [_Watcher(url) for url in urls]
    waiting = list(reversed(watchers))
    selector = selectors.DefaultSelector()
    buffer = bytearray(READ_BYTES)
    connecting = 0
    open_ = 0
    errors: list[str] = []

    def start_more() -> None:
        nonlocal connecting, open_
        while waiting and connecting < handshakes:
            watcher = waiting.pop()
            selector.register(watcher.connect(), selectors.EVENT_WRITE, watcher)
            connecting += 1
            open_ += 1

    def end(watcher: _Watcher, sock: socket.socket) -> None:
        nonlocal connecting, open_
        selector.unregister(sock)
        sock.close()
        open_ -= 1
        if not watcher.handshaken:
            connecting -= 1

    start_more()
    while open_:
        for key, events in selector.select():
            watcher = key.data
            sock = key.fileobj
            assert isinstance(watcher, _Watcher) and isinstance(sock, socket.socket)
            try:
                if events & selectors.EVENT_WRITE:
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        raise LeanWatcherError(f"connect failed: {os.strerror(error)}")
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.sendall(watcher.request)  # a few hundred bytes: the buffer takes them
                    selector.modify(sock, selectors.EVENT_READ, watcher)
                    continue
                was_handshaken = watcher.handshaken
                over = watcher.read(sock, buffer)
                if not was_handshaken and watcher.handshaken:
                    connecting -= 1
                if over:
                    end(watcher, sock)
            except (OSError, LeanWatcherError) as error:
                watcher.error = str(error)
                errors.append(watcher.error)
                end(watcher, sock)
        start_more()
    return {
        "statuses": [watcher.status for watcher in watchers],
        "messages": [watcher.walker.messages if watcher.walker else 0 for watcher in watchers],
        "errors": errors[:10],
    }


# -- the driver's side (bench.watchers) ------------------------------------------------------


class WatcherFleet:
    """The watchers' process (:mod:`bench._watcher_fleet`) and, once over, its CPU seconds."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.cpu = 0.0


async def open_watcher_fleet() -> WatcherFleet:
    """Started before the jobs are posted, and returned once it is ready (its imports done),
    so that its start costs the measured run nothing; it then waits for its URLs."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bench._watcher_fleet", "50"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    ready = b""
    while not ready.endswith(_READY):
        chunk = await process.stdout.receive_some(len(_READY) - len(ready))
        if not chunk:
            raise RuntimeError("the watchers' process ended before it was ready")
        ready += chunk
    return WatcherFleet(process)


async def run_watcher_fleet(
    fleet: WatcherFleet, urls: list[str], finals: list[str], messages: list[int]
) -> None:
    """Hand the fleet its URLs and take its results: the final status of each watcher that
    saw one into ``finals``, the messages it received into ``messages``."""
    process = fleet.process
    assert process.stdin is not None and process.stdout is not None
    try:
        await process.stdin.send_all((json.dumps(urls) + "\n").encode())
        output = b""
        while chunk := await process.stdout.receive_some(1 << 16):
            output += chunk
        await process.wait()
    finally:
        if process.returncode is None:  # cancelled (the run's hang guard): not left behind
            process.kill()
    result = json.loads(output)
    for status, received in zip(result["statuses"], result["messages"], strict=True):
        if status in FINAL_STATUSES:
            finals.append(status)
            messages.append(received)
    if result["errors"]:
        print(f"watchers' errors (first {len(result['errors'])}): {result['errors']}")
    fleet.cpu = result["cpu"]


def main() -> None:
    handshakes = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    sys.stdout.buffer.write(_READY)
    sys.stdout.flush()
    urls = json.loads(sys.stdin.readline())
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = watch_all(urls, handshakes)
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
