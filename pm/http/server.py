"""Serving the app: hypercorn's trio worker, with a deadline on every write to a client.

hypercorn writes to a client's socket inside a *shielded* cancel scope, with no deadline: a
client that stops reading (a WebSocket watcher that never calls ``recv``, a download left
paused) blocks that write forever once the kernel's buffers are full. Nothing can cancel
it, so the handler, its connection, the watcher slot and the job it watches stay in memory
for good, and the server's graceful stop waits on it forever. hypercorn has no setting for
this, so :func:`serve` runs hypercorn's own worker parts (its ``TCPServer`` per connection,
its lifespan and graceful stop, as ``hypercorn.trio.serve`` does) over listeners whose
streams give each 64 KiB of a write ``http.send_timeout`` seconds (and whose kernel send
buffer is ``http.send_buffer_bytes``, not autotuned up to 4 MiB). A write that misses its
deadline closes the socket and raises :class:`trio.BrokenResourceError`, which hypercorn
treats as the client having gone: the handler is told of the disconnect and ends.

The other hostile-client settings are hypercorn's own (``pm.gateway.http_server_config``):
``http.idle_timeout`` is its ``keep_alive_timeout``, which also bounds the time a client may
take to send a request's line and headers (the idle timer only stops at a complete request),
and ``http.max_websocket_message_bytes`` its ``websocket_max_message_size`` (1009 beyond it;
:class:`BoundedWebsocketBuffer` keeps that bound when the client goes on sending).

A plain TCP connection's stream is also handed to the app, in the ASGI scope's ``state``
(:data:`CONNECTION_STREAM`): the watchers' route writes its frames there directly
(:mod:`pm.http.watch_route`); the stream's lock keeps its writes and hypercorn's whole.
Before that, a plain TCP connection is offered to ``claim_connection``: the watchers' plain
handshakes are served there without hypercorn at all (:mod:`pm.http.watch_connection`), and
every other connection goes to hypercorn with the bytes looked at put back.

hypercorn is pinned exactly: ``tests/test_private_names.py`` pins the sources this module
mirrors (``hypercorn.trio.serve``) and replaces (``WebsocketBuffer``).

Error handling: accept errors are trio's ``serve_listeners``' (it waits and retries when out
of file descriptors); a connection's errors end that connection only.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from functools import partial

import hypercorn.config
import trio
from hypercorn.protocol import ws_stream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, Framework, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from .websocket_compression import use_extension_offer_dropping_streams

# The key of a plain TCP connection's SendDeadlineStream in the ASGI scope's "state": the
# watchers' route (pm.http.watch_route) writes its frames to it directly. Every write to that
# stream, hypercorn's and the route's, takes the stream's own lock, so frames never interleave.
CONNECTION_STREAM = "pm.connection_stream"
# Bytes of a write that must get through within one send_timeout: a client reading at least
# this much per send_timeout (2 KiB/s with the default 30 s) is slow, not stalled.
SEND_CHUNK = 64 * 1024
# Offered each plain TCP connection before hypercorn: True if it served the connection (and
# closed it), False if it left it to hypercorn, every byte it read unread
# (:meth:`SendDeadlineStream.unread`). The watchers' connections are served so
# (pm.http.watch_connection).
ConnectionClaim = Callable[["SendDeadlineStream"], Awaitable[bool]]


class BoundedWebsocketBuffer(ws_stream.WebsocketBuffer):
    """A client's WebSocket message being received, refused *before* a piece over the limit
    is stored, and kept refused.

    hypercorn's own buffer stores each piece, then checks the length, and is not cleared
    when it refuses: every later piece of the same message is stored too. A client that
    ignores the 1009 close and goes on sending one endless message grew the gateway's memory
    by all it sent (``test_client_going_on_after_1009_is_not_buffered`` in
    tests/test_http_hostile_clients.py: 32 MiB streamed, 33 MiB traced without this class).
    Here what was kept is freed at the refusal and every later piece is dropped unstored.
    """

    def extend(self, event: ws_stream.Message) -> None:
        if self.length + len(event.data) > self.max_length:
            self.length = self.max_length + 1  # stays over until hypercorn clears it
            self.value = None
            raise ws_stream.FrameTooLargeError()
        super().extend(event)


def use_bounded_websocket_buffer() -> None:
    """Make hypercorn buffer clients' WebSocket messages in :class:`BoundedWebsocketBuffer`.

    hypercorn (0.18.0) offers no setting for it: its ``WSStream`` looks the buffer class up
    in its module at each connection, so the name is replaced there, once per process.
    """
    ws_stream.WebsocketBuffer = BoundedWebsocketBuffer  # type: ignore[misc]


class SendDeadlineStream(trio.abc.HalfCloseableStream):
    """A client's TCP stream whose writes fail once 64 KiB of one takes ``send_timeout``.

    On a missed deadline the socket is closed (a half-written frame cannot be finished) and
    ``on_timeout`` is called once. Writes and the end of writing (``send_eof``) take turns.
    """

    def __init__(
        self, transport: trio.SocketStream, send_timeout: float, on_timeout: Callable[[], None]
    ) -> None:
        self.transport = transport
        # hypercorn reads the peer's and its own address from it.
        self.socket = transport.socket
        self._send_timeout = send_timeout
        self._on_timeout = on_timeout
        # hypercorn holds its own lock around send_all but calls send_eof without it: a
        # WebSocket the server closes while its reader answers the client's close frame did
        # both at once, and trio raised BusyResourceError, which ended the whole server.
        self._sending = trio.Lock()
        # Bytes read before hypercorn took the connection (see unread).
        self._unread = b""
        self._closed_now = False

    def unread(self, data: bytes) -> None:
        """Make ``data`` (read from this stream, not used) what the next reads return first:
        a connection looked at by a :data:`ConnectionClaim` and not taken goes to hypercorn
        whole."""
        self._unread = data + self._unread

    def send_now(self, data: bytes) -> int:
        """Write what the socket takes at once, without waiting or yielding: the bytes written
        (0 if it would block, or while another write is under way).

        The watchers' connections write through it (:mod:`pm.http.watch_connection`): most
        writes fit the socket's buffer, and then cost one system call instead of a trip
        through trio's scheduler. The rest of ``data`` is then the caller's to
        :meth:`send_all`, at once (nothing else writes in between: the lock was free).

        Error handling: a client gone raises :class:`trio.BrokenResourceError`, a stream
        closed here :class:`trio.ClosedResourceError`.
        """
        if self._sending.locked():
            return 0
        descriptor = self.socket.fileno()
        if descriptor < 0:
            raise trio.ClosedResourceError("this stream was closed")
        try:
            return os.write(descriptor, data)
        except BlockingIOError:
            return 0
        except OSError as error:
            raise trio.BrokenResourceError(f"the client is gone: {error}") from None

    def receive_now(self, max_bytes: int) -> bytes | None:
        """What the client sent that can be read at once, without waiting or yielding (``b""``
        at its end); None if nothing is there yet. Bytes unread are returned first.

        Error handling: a client gone raises :class:`trio.BrokenResourceError`, a stream
        closed here :class:`trio.ClosedResourceError`.
        """
        if self._unread:
            data, self._unread = self._unread[:max_bytes], self._unread[max_bytes:]
            return data
        descriptor = self.socket.fileno()
        if descriptor < 0:
            raise trio.ClosedResourceError("this stream was closed")
        try:
            return os.read(descriptor, max_bytes)
        except BlockingIOError:
            return None
        except OSError as error:
            raise trio.BrokenResourceError(f"the client is gone: {error}") from None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._sending:
            await self._send_all_in_turn(data)

    async def _send_all_in_turn(self, data: bytes | bytearray | memoryview) -> None:
        with memoryview(data) as view:
            for start in range(0, max(len(view), 1), SEND_CHUNK):
                with trio.move_on_after(self._send_timeout) as deadline:
                    await self.transport.send_all(view[start : start + SEND_CHUNK])
                if deadline.cancelled_caught:
                    self._on_timeout()
                    await trio.aclose_forcefully(self.transport)
                    raise trio.BrokenResourceError(
                        f"the client accepted less than {SEND_CHUNK} bytes in "
                        f"{self._send_timeout:g} s (http.send_timeout)"
                    )

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        async with self._sending:
            await self.transport.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._unread:
            await trio.lowlevel.checkpoint()
            data, self._unread = self._unread, b""
            if max_bytes is not None and len(data) > max_bytes:
                data, self._unread = data[:max_bytes], data[max_bytes:]
            return data
        return await self.transport.receive_some(max_bytes)

    def close_now(self) -> None:
        """Close the connection at once, without a checkpoint: a connection served to its end
        by a :data:`ConnectionClaim`. The close that trio's ``serve_listeners`` then gives
        every connection (:meth:`aclose`, in a cancelled scope) returns at once, instead of
        a checkpoint raising ``Cancelled`` into that scope (a tenth of a watcher's connection
        in a profile of 3,000)."""
        self._closed_now = True
        self.transport.socket.close()

    async def aclose(self) -> None:
        if self._closed_now:
            return  # nothing left to close
        await self.transport.aclose()


class SendDeadlineListener(trio.abc.Listener[SendDeadlineStream]):
    """Accepts from a socket listener and wraps each stream in :class:`SendDeadlineStream`,
    its kernel send buffer set to ``send_buffer_bytes`` (None: the system's autotuning)."""

    def __init__(
        self,
        inner: trio.SocketListener,
        send_timeout: float,
        on_timeout: Callable[[], None],
        send_buffer_bytes: int | None = None,
    ) -> None:
        self.inner = inner
        self._send_timeout = send_timeout
        self._on_timeout = on_timeout
        self._send_buffer_bytes = send_buffer_bytes

    async def accept(self) -> SendDeadlineStream:
        stream = await self.inner.accept()
        if self._send_buffer_bytes is not None:
            # Linux autotunes it up to net.ipv4.tcp_wmem's maximum (4 MiB): that much kernel
            # memory per client that stopped reading, outside the gateway's RSS.
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer_bytes)
        return SendDeadlineStream(stream, self._send_timeout, self._on_timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def serve(
    app: Framework,
    server_config: hypercorn.config.Config,
    *,
    send_timeout: float,
    send_buffer_bytes: int | None = None,
    on_send_timeout: Callable[[], None] = lambda: None,
    claim_connection: ConnectionClaim | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` as ``hypercorn.trio.serve`` does, with a deadline on every client write.

    Args:
      app: the ASGI app.
      server_config: hypercorn's settings (``pm.gateway.http_server_config``).
      send_timeout: seconds 64 KiB of a write may take before the client is disconnected.
      send_buffer_bytes: each client connection's kernel send buffer (None: autotuned).
      on_send_timeout: called for each client disconnected so (a counter).
      claim_connection: offered each plain TCP connection before hypercorn; what it does not
        take (it returns False, having unread what it read) hypercorn serves.
      shutdown_trigger: returns when the server should stop; open requests and WebSockets
        then get ``server_config.graceful_timeout`` seconds, and are cancelled after it.
      task_status: started with the URLs served (``http://127.0.0.1:8080``).

    Error handling: as ``hypercorn.trio.serve``: a failure of the app's lifespan or of the
    listeners ends this function with it; a connection's failure ends that connection.
    """
    use_bounded_websocket_buffer()
    use_extension_offer_dropping_streams()
    server_config.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(app, server_config.wsgi_max_body_size, None)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, server_config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners, binds = _listeners(
                server_config,
                partial(
                    SendDeadlineListener,
                    send_timeout=send_timeout,
                    on_timeout=on_send_timeout,
                    send_buffer_bytes=send_buffer_bytes,
                ),
            )
            task_status.started(binds)

            async def handle_connection(stream: trio.abc.Stream) -> None:
                if claim_connection is not None and isinstance(stream, SendDeadlineStream):
                    if await claim_connection(stream):
                        return
                await TCPServer(
                    wrapped,
                    server_config,
                    context,
                    _connection_state(lifespan_state, stream),
                    stream,
                )

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            handle_connection,
                            listeners,
                            handler_nursery=server_nursery,
                        )
                    )
            except BaseExceptionGroup as group:
                _, others = group.split(ShutdownError)
                if others is not None:
                    raise others from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = (
                    trio.current_time() + server_config.graceful_timeout
                )
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


def _connection_state(lifespan_state: LifespanState, stream: trio.abc.Stream) -> ConnectionState:
    """The ASGI ``state`` of one connection: the lifespan's, and a plain TCP connection's own
    stream under :data:`CONNECTION_STREAM` (a TLS one has none: its writes go through
    hypercorn, whose lock a direct write could not share)."""
    state = dict(lifespan_state)
    if isinstance(stream, SendDeadlineStream):
        state[CONNECTION_STREAM] = stream
    return ConnectionState(state)


def _listeners(
    server_config: hypercorn.config.Config,
    wrap: Callable[[trio.SocketListener], SendDeadlineListener],
) -> tuple[list[trio.abc.Listener[trio.abc.Stream]], list[str]]:
    """Listening sockets bound as ``server_config`` says, and their URLs."""
    sockets = server_config.create_sockets()
    ssl_context = server_config.create_ssl_context()
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
    binds = []
    for secure, group in ((True, sockets.secure_sockets), (False, sockets.insecure_sockets)):
        for sock in group:
            sock.listen(server_config.backlog)
            listener: trio.abc.Listener[trio.abc.Stream] = wrap(
                trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            )
            if secure:
                # The deadline is on the TCP stream under TLS: what stalls is the socket.
                listener = trio.SSLListener(listener, ssl_context, https_compatible=True)
            listeners.append(listener)
            scheme = "https" if secure else "http"
            binds.append(f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}")
    return listeners, binds
