"""One watcher's WebSocket after the handshake, on the watchers' own path: the server's frames
out, the client's frames in.

Split from :mod:`pm.http.watch_connection` (which reads and answers the handshake, then
serves the watcher over this): the writes, one system call when the socket takes them at once
(:meth:`~pm.http.server.SendDeadlineStream.send_now`), the rest through the stream's deadline;
the client's frames parsed by wsproto (server side): pings answered, messages dropped (1009
over ``http.max_websocket_message_bytes``), a close frame answered; after the server's own
close frame, frames walked by their headers
(:class:`~pm.http.websocket_frames.ClientFramesAfterClose`).

Error handling: a client gone (a write or a read failed) cancels ``watching``; a frame that
broke the protocol is answered with wsproto's close code.
"""

from __future__ import annotations

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason

from .server import SendDeadlineStream
from .watch_route import CLOSE_NORMAL
from .websocket_frames import ClientFramesAfterClose, text_frames
from .websocket_frames import close_frame as server_close_frame

# The most read from a watcher's socket at once.
RECEIVE_BYTES = 64 * 1024


class WatcherSocket:
    """One watcher's connection after the handshake: the server's frames out, the client's
    frames in (wsproto, server side). ``watching`` is cancelled when the client closes,
    goes away, or broke the protocol."""

    def __init__(self, stream: SendDeadlineStream, max_message: int) -> None:
        self._stream = stream
        self._max_message = max_message
        # Made at the client's first bytes: most watchers' clients send nothing before the
        # server's close frame (wsproto's connection was a twentieth of a watcher's cost).
        self._protocol: Connection | None = None
        self._message_length = 0
        self._discarding = False
        # The server's close frame sent while the client had sent nothing: from there its
        # frames are walked by their headers (they start at a frame's start), not parsed.
        self._closed_unparsed = False
        self._after_close = ClientFramesAfterClose()
        self.watching = trio.CancelScope()
        # Whether any byte went out (else a failure before the handshake's answer must write
        # the answer before its close frame).
        self.written_any = False

    async def write(self, data: bytes) -> bool:
        """Write ``data`` whole; False if the client is gone."""
        try:
            sent = self.send_now(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.watching.cancel()
            return False
        return sent == len(data) or await self.send_rest(memoryview(data)[sent:])

    def send_now(self, data: bytes) -> int:
        """What the socket takes of ``data`` at once (a group's write, :mod:`pm.watch_group`).

        Error handling: a client gone raises :class:`trio.BrokenResourceError` or
        :class:`trio.ClosedResourceError`."""
        written = self._stream.send_now(data)
        self.written_any = self.written_any or written > 0
        return written

    async def send_rest(self, data: memoryview) -> bool:
        """Write ``data`` whole, waiting for the socket; False if the client is gone."""
        try:
            # Shielded as hypercorn's own writes are: a cancelled write would leave half a
            # frame on the connection; the stream's send deadline bounds it instead.
            with trio.CancelScope(shield=True):
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.watching.cancel()
            return False
        return True

    async def write_messages(self, messages: list[bytes]) -> bool:
        """The watcher's :data:`~pm.http.watch_route.Writer`: one text frame per message."""
        return await self.write(text_frames(messages))

    def close_frame(self, code: int) -> bytes:
        """The close frame, to be written now (with what precedes it, in one write); ``b""``
        once a close frame was sent, or after the client's close was answered."""
        protocol = self._protocol
        if protocol is None:
            if self._closed_unparsed:
                return b""
            self._closed_unparsed = True
            return server_close_frame(code)
        if protocol.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return protocol.send(CloseConnection(code=code))
        return b""

    def normal_close_frame(self) -> bytes:
        """The close frame that follows the final message (1000), as :meth:`close_frame`."""
        return self.close_frame(CLOSE_NORMAL)

    async def close(self, code: int) -> None:
        """Send the close frame (once; not after the client's own)."""
        if frame := self.close_frame(code):
            await self.write(frame)

    def receive(self, data: bytes) -> None:
        """What the client sent, for wsproto (not after a close frame sent unparsed)."""
        if data:
            if self._protocol is None:
                self._protocol = Connection(ConnectionType.SERVER)
            self._protocol.receive_data(data)

    async def read_until_closed(self, connection_scope: trio.CancelScope) -> None:
        """Read the client's frames until its close frame or its end of stream, then end the
        connection's tasks (``connection_scope``).

        A client that sent nothing before the server's close frame (most watchers) has its
        close answer walked by its header alone (:class:`ClientFramesAfterClose`), not parsed
        by wsproto: after that close nothing is answered anyway."""
        try:
            while self._discarding or await self._handle_events():
                data = await self._stream.receive_some(RECEIVE_BYTES)
                if not data:
                    break
                if self._closed_unparsed:
                    if self._after_close.feed(data):
                        break
                elif not self._discarding:
                    self.receive(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.watching.cancel()
        connection_scope.cancel()

    async def _handle_events(self) -> bool:
        """Act on what the client sent; False once the connection is over."""
        protocol = self._protocol
        if protocol is None:
            return True  # nothing sent yet
        for event in protocol.events():
            if isinstance(event, Message):
                self._message_length += len(event.data)
                if self._message_length > self._max_message:
                    self.watching.cancel()
                    await self.close(CloseReason.MESSAGE_TOO_BIG)
                    # What it sends next is read and dropped unparsed until it closes (a
                    # client still sending would see a reset, and lose our close frame).
                    self._discarding = True
                    return True
                if event.message_finished:
                    self._message_length = 0
            elif isinstance(event, Ping):
                if protocol.state is ConnectionState.OPEN:
                    # After our close frame a ping is not answered (RFC 6455 section 5.5.1:
                    # nothing may follow a close frame; wsproto refuses to make one).
                    await self.write(protocol.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.watching.cancel()
                if protocol.state is ConnectionState.REMOTE_CLOSING:
                    await self.write(protocol.send(event.response()))
                else:
                    # A frame that broke the protocol (wsproto says which code), or the
                    # answer to our own close frame.
                    await self.close(event.code)
                return False
        return True
