"""The server's close frame and the client's frames after it (pm/http/websocket_frames.py),
against the frames wsproto makes: pure, no sockets."""

from __future__ import annotations

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from pm.http.websocket_frames import ClientFramesAfterClose, close_frame


def test_the_close_frame_is_wsprotos() -> None:
    for code in (1000, 1011):
        server = Connection(ConnectionType.SERVER)
        assert close_frame(code) == server.send(CloseConnection(code=code))


def client_frames(*events: object) -> bytes:
    client = Connection(ConnectionType.CLIENT)
    return b"".join(client.send(event) for event in events)  # type: ignore[arg-type]


def test_the_walk_ends_once_the_clients_close_frame_is_whole() -> None:
    before = client_frames(Ping(b"late"), TextMessage("x" * 70_000), BytesMessage(b"y" * 300))
    close = client_frames(CloseConnection(code=1000, reason="bye"))
    data = before + close
    # Fed in every size of piece: done exactly when the last byte of the close frame came.
    for piece in (1, 2, 3, 7, 4096, len(data)):
        frames = ClientFramesAfterClose()
        fed = 0
        while fed < len(data):
            done = frames.feed(data[fed : fed + piece])
            fed = min(fed + piece, len(data))
            assert done == (fed == len(data)), (piece, fed)


def test_a_frame_no_client_may_send_ends_the_walk() -> None:
    ping = client_frames(Ping(b"p"))
    server = Connection(ConnectionType.SERVER)
    unmasked = server.send(Ping(b"p"))
    reserved_bit = bytes((ping[0] | 0x40,)) + ping[1:]
    reserved_opcode = bytes((0x83,)) + ping[1:]
    for frame in (unmasked, reserved_bit, reserved_opcode):
        assert ClientFramesAfterClose().feed(frame)
    assert not ClientFramesAfterClose().feed(ping)
