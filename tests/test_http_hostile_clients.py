"""Slow and hostile HTTP clients against the real server (``pm.http.serve``, hypercorn) on a
free localhost port, over a real engine with fake devices (``tests/served_app.py``).

The hostile clients are raw sockets: a WebSocket watcher that completes its handshake and
then never reads (its receive buffer is made small so that the server's writes stall soon), a
slow-loris client that sends its request one byte at a time and never finishes it, and a
client that sends WebSocket messages over ``http.max_websocket_message_bytes``. The limits
are made short here (fractions of a second) and the assertions leave wide margins.
"""

from __future__ import annotations

import array
import fcntl
import socket
import struct
import termios
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from pm.http.server import SendDeadlineListener, SendDeadlineStream
from tests.job_api import entry
from tests.served_app import ServedGateway, app_config, receive_all, scrape, serve_app
from tests.waiting import poll_until

# Hang guard of each test: every wait below is bounded by it.
GUARD = 30.0
# The never-reading watcher's receive buffer: a few KiB, so the server's sends stall after
# its own send buffer filled.
STALLED_RECEIVE_BUFFER = 4096
WEBSOCKET_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


async def connect_raw(gateway: ServedGateway) -> trio.SocketStream:
    """A TCP connection to the server, with a small receive buffer."""
    address = urlsplit(gateway.base_url)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RECEIVE_BUFFER)
    await sock.connect((address.hostname, address.port))
    return trio.SocketStream(sock)


async def read_head(stream: trio.SocketStream) -> bytes:
    """The HTTP response head (status line and headers)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = await stream.receive_some(1024)
        assert chunk, f"closed before the response head ended: {received!r}"
        received += chunk
    return received.split(b"\r\n\r\n", 1)[0]


@asynccontextmanager
async def never_reading_watcher(
    gateway: ServedGateway, path: str
) -> AsyncIterator[trio.SocketStream]:
    """A WebSocket on ``path`` whose client completes the handshake, then never reads."""
    stream = await connect_raw(gateway)
    async with stream:
        handshake = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {WEBSOCKET_KEY}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await stream.send_all(handshake.encode())
        head = await read_head(stream)
        assert head.startswith(b"HTTP/1.1 101"), head
        yield stream


async def read_until_closed(stream: trio.SocketStream) -> None:
    """Drain ``stream`` until the server closes or resets it."""
    try:
        while await stream.receive_some(1 << 20):
            pass
    except trio.BrokenResourceError:
        pass


async def heavy_job(gateway: ServedGateway, devices: int = 400) -> int:
    """A job whose answers (32 KiB each) the devices hold until ``answer_all``: ~13 MB of
    task messages, far more than the socket buffers between server and client."""
    gateway.devices.auto_answer = False
    gateway.devices.result_padding = 32 * 1024
    job = await gateway.submit(entry([f"d{n}" for n in range(devices)]))
    await poll_until(lambda: len(gateway.devices.requests) == devices)
    return int(job["id"])


async def test_watcher_that_never_reads_is_disconnected_and_does_not_delay_a_reader() -> None:
    send_timeout = 0.5
    config = app_config(http={"send_timeout": send_timeout})
    with trio.fail_after(GUARD):
        async with serve_app(config) as gateway:
            job_id = await heavy_job(gateway)
            feed = gateway.job(job_id).feed
            async with (
                never_reading_watcher(gateway, f"/jobs/{job_id}/ws?tasks=batch") as stalled,
                open_websocket_url(f"{gateway.ws_url}/jobs/{job_id}/ws?tasks=none") as reader,
            ):
                assert (await scrape(gateway))[("pm_websocket_watchers", ())] == 2
                gateway.devices.answer_all()
                # The reading watcher gets the final state while the other holds its send.
                messages, code = await receive_all(reader)
                assert code == 1000
                assert messages[-1]["job"]["status"] == "resolved"
                # The stalled one is cut off: its connection, slot and feed are let go.
                ended = time.monotonic()
                await poll_until(lambda: feed.watchers == 0)
                assert time.monotonic() - ended < send_timeout + 10.0
                metrics = await scrape(gateway)
                assert metrics[("pm_http_send_timeouts_total", ())] == 1
                assert metrics[("pm_websocket_watchers", ())] == 0
                await read_until_closed(stalled)


async def test_server_stop_is_not_held_by_a_watcher_that_never_reads() -> None:
    # Long enough that the stop begins while the watcher's send is still stalled.
    send_timeout = 3.0
    config = app_config(http={"send_timeout": send_timeout})
    rescued = False

    async def rescue(stalled: trio.SocketStream) -> None:
        # Without the send deadline the stop waits forever on a shielded send that no hang
        # guard can cancel: closing the client's end is what ends it then, and fails the test.
        nonlocal rescued
        await trio.sleep(send_timeout + 10.0)
        rescued = True
        await stalled.aclose()

    with trio.fail_after(GUARD):
        async with AsyncExitStack() as client_side, trio.open_nursery() as watchdog:
            async with serve_app(config) as gateway:
                job_id = await heavy_job(gateway)
                job = gateway.job(job_id)
                # Entered on the outer stack: the client stays open after the server stopped.
                stalled = await client_side.enter_async_context(
                    never_reading_watcher(gateway, f"/jobs/{job_id}/ws?tasks=batch")
                )
                watchdog.start_soon(rescue, stalled)
                gateway.devices.answer_all()
                await job.ended.wait()
                assert job.feed.watchers == 1  # its final message cannot get through
                stopping = time.monotonic()
                # Leaving serve_app stops the server (graceful_timeout 1 s) with it open.
            # The send's deadline ends the stalled connection.
            stopped_after = time.monotonic() - stopping
            watchdog.cancel_scope.cancel()
        assert not rescued, "the server's stop waited on a client that never reads"
        assert send_timeout * 0.5 < stopped_after < send_timeout + 10.0


async def test_slow_loris_is_closed_after_idle_timeout_and_does_not_delay_requests() -> None:
    idle_timeout = 0.5
    loris_count = 20
    config = app_config(http={"idle_timeout": idle_timeout})
    open_for: list[float] = []

    async def slow_loris(gateway: ServedGateway) -> None:
        async with await connect_raw(gateway) as stream:
            started = time.monotonic()
            request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: "
            await stream.send_all(request)
            try:
                # One more header byte every 0.1 s, never the blank line that ends them.
                while True:
                    await stream.send_all(b"x")
                    with trio.move_on_after(0.1):
                        if not await stream.receive_some(1024):
                            break
            except trio.BrokenResourceError:
                pass
            open_for.append(time.monotonic() - started)

    with trio.fail_after(GUARD):
        async with serve_app(config) as gateway, trio.open_nursery() as nursery:
            for _ in range(loris_count):
                nursery.start_soon(slow_loris, gateway)
            # Meanwhile, normal requests are answered at once.
            for _ in range(10):
                started = time.monotonic()
                response = await gateway.client.get("/healthz")
                assert response.status_code == 200
                assert time.monotonic() - started < 2.0
    assert len(open_for) == loris_count
    # Closed after idle_timeout, not hypercorn's default 5 s, and certainly not never.
    assert min(open_for) >= idle_timeout * 0.8
    assert max(open_for) < idle_timeout + 3.0


async def test_oversized_client_message_closes_that_websocket_with_1009_only() -> None:
    limit = 1024
    config = app_config(http={"max_websocket_message_bytes": limit})
    with trio.fail_after(GUARD):
        async with serve_app(config) as gateway:
            gateway.devices.auto_answer = False
            job = await gateway.submit(entry(["a", "b"]))
            url = f"{gateway.ws_url}/jobs/{job['id']}/ws"
            async with (
                open_websocket_url(url) as hostile,
                open_websocket_url(url) as chatty,
                open_websocket_url(url) as bystander,
            ):
                await hostile.get_message()
                await hostile.send_message("x" * (limit + 1))
                try:
                    with trio.fail_after(5.0):
                        while True:
                            await hostile.get_message()
                except ConnectionClosed as closed:
                    assert closed.reason.code == 1009
                # Garbage under the limit is read and dropped; that watcher goes on.
                for _ in range(100):
                    await chatty.send_message("{{{ not json")
                    await chatty.send_message(b"\x00\xff binary")
                await poll_until(lambda: gateway.job(job["id"]).feed.watchers == 2)
                gateway.devices.answer_all()
                for watcher in (chatty, bystander):
                    messages, code = await receive_all(watcher)
                    assert code == 1000
                    assert messages[-1]["job"]["status"] == "resolved"


async def test_client_going_on_after_1009_is_not_buffered() -> None:
    limit = 1024
    streamed = 32 * 1024 * 1024
    config = app_config(http={"max_websocket_message_bytes": limit})
    with trio.fail_after(GUARD):
        async with serve_app(config) as gateway:
            gateway.devices.auto_answer = False
            job = await gateway.submit(entry(["a"]))
            async with never_reading_watcher(gateway, f"/jobs/{job['id']}/ws") as hostile:
                # One text frame announcing 1 TiB, masked (as clients must), then its bytes:
                # the server refuses it with 1009 after `limit`, the client ignores that.
                header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 1 << 40) + bytes(4)
                tracemalloc.start()
                try:
                    await hostile.send_all(header)
                    chunk = b"a" * (1 << 20)
                    for _ in range(streamed // len(chunk)):
                        await hostile.send_all(chunk)
                    # Until the server has read it all (nothing left in our send queue).
                    await poll_until(lambda: _unread_by_peer(hostile) == 0)
                    _, peak = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
                # hypercorn alone stored the whole 32 MiB message (its buffer stored each
                # piece before checking the limit, and kept storing after refusing).
                assert peak < streamed / 4, f"{peak / 2**20:.1f} MiB traced for one client"


def _unread_by_peer(stream: trio.SocketStream) -> int:
    """Bytes sent on ``stream`` that the peer has not read yet (Linux ``SIOCOUTQ``)."""
    unsent = array.array("i", [0])
    fcntl.ioctl(stream.socket.fileno(), termios.TIOCOUTQ, unsent)
    return unsent[0]


async def test_client_connections_get_the_configured_kernel_send_buffer() -> None:
    send_buffer = 96 * 1024
    with trio.fail_after(GUARD):
        (inner,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = SendDeadlineListener(
            inner, send_timeout=1.0, on_timeout=lambda: None, send_buffer_bytes=send_buffer
        )
        async with listener, await trio.open_tcp_stream(*inner.socket.getsockname()):
            async with await listener.accept() as accepted:
                # Linux reserves twice what was asked for its bookkeeping, and then never
                # autotunes it (up to 4 MiB per connection here).
                size = accepted.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
                assert size == 2 * send_buffer


async def test_a_send_and_the_end_of_sending_at_once_do_not_collide() -> None:
    # hypercorn half-closes a connection (send_eof) without the lock its writes hold: a
    # WebSocket the server closes while its reader answers the client's close frame did both
    # at once, and trio's SocketStream raised BusyResourceError, which nothing in hypercorn
    # catches: it ended the whole server (seen under bench.watchers). The stream serialises
    # them; a write after the end fails as hypercorn expects of a gone client (trio's
    # ClosedResourceError or BrokenResourceError, both handled as a disconnect). Which of the
    # two runs first is trio's choice, and only some orders collided: 20 connections try.
    with trio.fail_after(GUARD):
        (inner,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = SendDeadlineListener(inner, send_timeout=1.0, on_timeout=lambda: None)
        async with listener:
            for _ in range(20):
                async with (
                    await trio.open_tcp_stream(*inner.socket.getsockname()),
                    await listener.accept() as accepted,
                ):
                    outcomes: list[str] = []
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(accepted.send_eof)
                        nursery.start_soon(_write_close_frame, accepted, outcomes)
                    assert outcomes in (["sent"], ["client gone"])


async def _write_close_frame(stream: SendDeadlineStream, outcomes: list[str]) -> None:
    try:
        await stream.send_all(b"\x88\x02\x03\xe8")
        outcomes.append("sent")
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        outcomes.append("client gone")
