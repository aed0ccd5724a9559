"""Watchers' connections served without hypercorn (pm/http/watch_connection.py), over the real
server: which connections are taken, the answers' bytes, the client's frames, the fallbacks.
The watchers' protocol itself is the contract of tests/integration/test_watch_ws.py and the
tests/test_http_*.py WebSocket tests, which run over this same path."""

from __future__ import annotations

import json
import logging
import re
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.trio.tcp_server import TCPServer
from trio_websocket import open_websocket_url
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Ping, Pong, TextMessage

import pm.http.server
from pm.http.server import SendDeadlineListener
from tests.job_api import entry
from tests.served_app import ServedGateway, app_config, receive_all, serve_app
from tests.test_http_hostile_clients import WEBSOCKET_KEY, read_head
from tests.waiting import poll_until

GUARD = 30.0


def handshake(path: str, *extra: str) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {WEBSOCKET_KEY}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def connect(gateway: ServedGateway) -> trio.SocketStream:
    host, port = gateway.base_url.removeprefix("http://").rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def answer(gateway: ServedGateway, request: bytes) -> bytes:
    """What the server answers ``request`` with (a 101's head; a refusal until the server
    closes), its ``date`` header blanked."""
    async with await connect(gateway) as stream:
        await stream.send_all(request)
        received, rest = await _head_and_rest(stream)
        if not received.startswith(b"HTTP/1.1 101 "):
            received += b"\r\n\r\n" + rest
            while chunk := await stream.receive_some(65536):
                received += chunk
    return re.sub(rb"\r\ndate: [^\r]*", b"\r\ndate: -", received)


@pytest.fixture
def hypercorn_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every connection hypercorn serves, in order."""
    served: list[object] = []

    class CountedTCPServer(TCPServer):
        def __init__(self, *args: Any) -> None:
            served.append(self)
            super().__init__(*args)

    monkeypatch.setattr(pm.http.server, "TCPServer", CountedTCPServer)
    yield served


async def test_a_watcher_is_served_without_hypercorn(
    hypercorn_connections: list[object],
) -> None:
    with trio.fail_after(GUARD):
        async with serve_app(app_config()) as gateway:
            job = await gateway.submit(entry(["a", "b"]))  # through hypercorn
            before = len(hypercorn_connections)
            async with open_websocket_url(f"{gateway.ws_url}/jobs/{job['id']}/ws") as ws:
                messages, code = await receive_all(ws)
            assert code == 1000
            assert messages[-1]["job"]["status"] == "resolved"
            assert len(hypercorn_connections) == before
            # Any other connection still goes to hypercorn (and is counted above).
            async with await connect(gateway) as stream:
                await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert (await read_head(stream)).startswith(b"HTTP/1.1 200 ")
            assert len(hypercorn_connections) == before + 1


async def test_answers_are_the_bytes_hypercorn_writes() -> None:
    # /jobs/%31/ws is the same route, but a percent-encoded path is hypercorn's to decode:
    # the same handshake served by both paths.
    with trio.fail_after(GUARD):
        async with serve_app(app_config(limits={"max_watchers_per_job": 1})) as gateway:
            gateway.devices.auto_answer = False
            job_id = (await gateway.submit(entry(["a"])))["id"]
            for path in (f"/jobs/{job_id}/ws", "/jobs/999/ws", f"/jobs/{job_id}/ws?bad=1"):
                hypercorn_path = path.replace(f"/jobs/{job_id}/", f"/jobs/%{0x30 + job_id:x}/")
                hypercorn_path = hypercorn_path.replace("/jobs/999/", "/jobs/%39%39%39/")
                offer = "Sec-WebSocket-Protocol: chat, pm.watch"
                ours = await answer(gateway, handshake(path, offer))
                theirs = await answer(gateway, handshake(hypercorn_path, offer))
                assert ours == theirs
            assert ours.startswith(b"HTTP/1.1 400 ")
            # The 429 of a full job, both ways.
            async with await connect(gateway) as holder:
                await holder.send_all(handshake(f"/jobs/{job_id}/ws"))
                assert (await read_head(holder)).startswith(b"HTTP/1.1 101 ")
                ours = await answer(gateway, handshake(f"/jobs/{job_id}/ws"))
                theirs = await answer(gateway, handshake(f"/jobs/%{0x30 + job_id:x}/ws"))
            assert ours == theirs
            assert ours.startswith(b"HTTP/1.1 429 ") and b"\r\nretry-after: " in ours


async def test_client_pings_are_answered_and_its_close_ends_the_watcher() -> None:
    with trio.fail_after(GUARD):
        async with serve_app(app_config()) as gateway:
            gateway.devices.auto_answer = False
            job_id = (await gateway.submit(entry(["a"])))["id"]
            client = Connection(ConnectionType.CLIENT)
            async with await connect(gateway) as stream:
                # A ping sent with the handshake, before the answer: read after it.
                await stream.send_all(
                    handshake(f"/jobs/{job_id}/ws?tasks=none") + client.send(Ping(b"hello"))
                )
                head, rest = await _head_and_rest(stream)
                assert head.startswith(b"HTTP/1.1 101 ")
                events = await _events_until(stream, client, rest, Pong)
                assert isinstance(events[0], TextMessage)  # the first snapshot
                assert events[-1] == Pong(payload=b"hello")
                assert gateway.job(job_id).feed.watchers == 1
                await stream.send_all(client.send(CloseConnection(code=1000)))
                events = await _events_until(stream, client, b"", CloseConnection)
                assert events[-1].code == 1000
                assert await stream.receive_some(1024) == b""  # then the server closes
            await poll_until(lambda: gateway.job(job_id).feed.watchers == 0)


async def _head_and_rest(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    """The answer's head, and what came after it in the same reads."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed before the answer's head ended: {received!r}"
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    return head, rest


async def _events_until(
    stream: trio.SocketStream, client: Connection, pending: bytes, kind: type
) -> list[Any]:
    """The client's wsproto events until one of ``kind`` (from ``pending`` first)."""
    received: list[Any] = []
    while True:
        if pending:
            client.receive_data(pending)
        received += list(client.events())
        if received and isinstance(received[-1], kind):
            return received
        pending = await stream.receive_some(65536)
        assert pending, f"closed before a {kind.__name__}: {received}"


async def test_a_watch_head_not_finished_is_closed_after_idle_timeout() -> None:
    idle_timeout = 0.5
    with trio.fail_after(GUARD):
        async with serve_app(app_config(http={"idle_timeout": idle_timeout})) as gateway:
            async with await connect(gateway) as stream:
                started = time.monotonic()
                await stream.send_all(b"GET /jobs/1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                assert await stream.receive_some(1024) == b""
                open_for = time.monotonic() - started
    assert idle_timeout * 0.8 <= open_for < idle_timeout + 3.0


async def test_send_now_writes_at_once_or_leaves_the_rest_to_send_all() -> None:
    with trio.fail_after(GUARD):
        (inner,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = SendDeadlineListener(
            inner, send_timeout=5.0, on_timeout=lambda: None, send_buffer_bytes=8192
        )
        async with listener, await trio.open_tcp_stream(*inner.socket.getsockname()) as client:
            async with await listener.accept() as accepted:
                assert accepted.send_now(b"hello") == 5
                assert await client.receive_some(5) == b"hello"
                # Once the buffers are full it writes what fits, then nothing.
                written = [accepted.send_now(b"x" * 65536) for _ in range(64)]
                assert 0 < sum(written) < 64 * 65536 and written[-1] == 0
                # While a send_all waits its turn, nothing is written past it.
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(accepted.send_all, b"y" * 65536)
                    await trio.testing.wait_all_tasks_blocked()
                    assert accepted.send_now(b"z") == 0
                    nursery.cancel_scope.cancel()
            with pytest.raises(trio.ClosedResourceError):
                accepted.send_now(b"after close")


async def test_receive_now_reads_what_is_there_without_waiting() -> None:
    with trio.fail_after(GUARD):
        (inner,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = SendDeadlineListener(inner, send_timeout=5.0, on_timeout=lambda: None)
        async with listener, await trio.open_tcp_stream(*inner.socket.getsockname()) as client:
            async with await listener.accept() as accepted:
                assert accepted.receive_now(1024) is None  # nothing yet
                await client.send_all(b"head")
                await trio.lowlevel.wait_readable(accepted.socket)
                accepted.unread(b"first, ")
                assert accepted.receive_now(3) == b"fir"
                assert accepted.receive_now(1024) == b"st, "
                assert accepted.receive_now(1024) == b"head"
                await client.send_eof()
                await trio.lowlevel.wait_readable(accepted.socket)
                assert accepted.receive_now(1024) == b""  # its end
            with pytest.raises(trio.ClosedResourceError):
                accepted.receive_now(1024)


async def test_close_now_closes_at_once_and_the_later_aclose_has_nothing_to_do() -> None:
    with trio.fail_after(GUARD):
        (inner,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = SendDeadlineListener(inner, send_timeout=5.0, on_timeout=lambda: None)
        async with listener, await trio.open_tcp_stream(*inner.socket.getsockname()) as client:
            accepted = await listener.accept()
            accepted.close_now()
            assert await client.receive_some(1024) == b""
            # As trio's serve_listeners closes every connection after its handler: in a
            # cancelled scope, which a checkpoint would raise Cancelled into.
            with trio.CancelScope() as closing:
                closing.cancel()
                await accepted.aclose()
            assert not closing.cancelled_caught


async def test_bytes_unread_are_read_first() -> None:
    with trio.fail_after(GUARD):
        (inner,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = SendDeadlineListener(inner, send_timeout=5.0, on_timeout=lambda: None)
        async with listener, await trio.open_tcp_stream(*inner.socket.getsockname()) as client:
            async with await listener.accept() as accepted:
                await client.send_all(b"later")
                accepted.unread(b"first, ")
                assert await accepted.receive_some(3) == b"fir"
                assert await accepted.receive_some() == b"st, "
                received = b""
                while len(received) < 5:
                    received += await accepted.receive_some()
                assert received == b"later"


async def test_a_client_reset_during_the_head_ends_that_connection_only() -> None:
    with trio.fail_after(GUARD):
        async with serve_app(app_config()) as gateway:
            for partial in (b"GET /jobs/1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"GET /jo"):
                stream = await connect(gateway)
                await stream.send_all(partial)
                await trio.testing.wait_all_tasks_blocked()
                # Closed with a reset (SO_LINGER 0): the server's next read fails.
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()  # the server has read the resets
            assert (await gateway.client.get("/healthz")).status_code == 200


async def finished_job(gateway: ServedGateway) -> int:
    """A job already final (its devices answered), still in the gateway's memory."""
    job_id = int((await gateway.submit(entry(["a", "b"])))["id"])
    await poll_until(lambda: gateway.job(job_id).feed.final_message is not None)
    return job_id


async def test_a_finished_jobs_watcher_is_answered_in_one_write(
    watcher_writes: list[bytes],
) -> None:
    with trio.fail_after(GUARD):
        async with serve_app(app_config()) as gateway:
            job_id = await finished_job(gateway)
            client = Connection(ConnectionType.CLIENT)
            async with await connect(gateway) as stream:
                await stream.send_all(handshake(f"/jobs/{job_id}/ws?tasks=none"))
                head, rest = await _head_and_rest(stream)
                events = await _events_until(stream, client, rest, CloseConnection)
                await stream.send_all(client.send(events[-1].response()))
                assert await stream.receive_some(1024) == b""  # then the server closes
    assert head.startswith(b"HTTP/1.1 101 ")
    assert [type(event) for event in events] == [TextMessage, CloseConnection]
    assert json.loads(events[0].data)["job"]["status"] == "resolved"
    assert events[1].code == 1000
    # The answer, the final message and the close frame: one write, the only one.
    (write,) = watcher_writes
    assert write.startswith(b"HTTP/1.1 101 ") and write.endswith(b"\x88\x02\x03\xe8")


@pytest.mark.parametrize("job", ["finished", "running"])
async def test_a_ping_after_the_servers_close_is_neither_answered_nor_an_error(
    job: str, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(GUARD):
        async with serve_app(app_config()) as gateway:
            if job == "finished":
                job_id = await finished_job(gateway)
            else:
                gateway.devices.auto_answer = False
                job_id = int((await gateway.submit(entry(["a"])))["id"])
            client = Connection(ConnectionType.CLIENT)
            async with await connect(gateway) as stream:
                await stream.send_all(handshake(f"/jobs/{job_id}/ws?tasks=none"))
                _, rest = await _head_and_rest(stream)
                if job == "running":
                    await _events_until(stream, client, rest, TextMessage)  # the first snapshot
                    gateway.devices.answer_all()
                    rest = b""
                events = await _events_until(stream, client, rest, CloseConnection)
                # After the server's close frame nothing may be sent (RFC 6455 section 5.5.1):
                # the ping is neither answered nor an error. (Made by a client still open:
                # this one, having read the close, refuses to.)
                late_ping = Connection(ConnectionType.CLIENT).send(Ping(b"late"))
                await stream.send_all(late_ping)
                await stream.send_all(client.send(events[-1].response()))
                received = b""
                while chunk := await stream.receive_some(1024):
                    received += chunk
    assert isinstance(events[-2], TextMessage) and events[-1].code == 1000
    assert json.loads(events[-2].data)["job"]["status"] == "resolved"
    assert received == b""  # no pong after the close frame: the server closed
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
