"""WebSocket text frames as a server sends them (RFC 6455 section 5.2), for the watchers' path.

Pure functions, no I/O. A server's frames are not masked, so a frame is a two- to ten-byte
header and the payload as it is: a watcher's message, already encoded JSON (UTF-8), goes out
without being decoded to ``str`` and encoded again, and several frames are joined into one
write (:mod:`pm.http.watch_route`). Only what that path needs: final text frames, no
extension bits (a message without RSV1 is uncompressed even where permessage-deflate was
negotiated, RFC 7692 section 6); the close frame; and, once the server has sent its close,
the client's frames walked by their headers until its close (:class:`ClientFramesAfterClose`).
"""

from __future__ import annotations

from collections.abc import Iterable

# FIN set, opcode 0x1 (text); FIN set, opcode 0x8 (close).
_FINAL_TEXT = 0x81
_FINAL_CLOSE = 0x88
# A client's frame header: reserved bits and opcode in the first byte, the mask bit and the
# length in the second; then the mask key (RFC 6455 section 5.2).
_RESERVED_BITS = 0x70
_OPCODE = 0x0F
_OPCODE_CLOSE = 0x8
# Continuation, text, binary; close, ping, pong.
_CLIENT_OPCODES = frozenset((0x0, 0x1, 0x2, 0x8, 0x9, 0xA))
_MASKED = 0x80
_LENGTH = 0x7F
_MASK_BYTES = 4
# Payload lengths up to 125 fit the second byte; up to 65535 follow as 16 bits after 126,
# anything longer as 64 bits after 127.
_SHORT_LENGTH = 125
_LENGTH_16 = 126
_LENGTH_64 = 127


def text_frame_header(length: int) -> bytes:
    """The header of an unmasked, final text frame of ``length`` payload bytes."""
    if length <= _SHORT_LENGTH:
        return bytes((_FINAL_TEXT, length))
    if length < 1 << 16:
        return bytes((_FINAL_TEXT, _LENGTH_16)) + length.to_bytes(2, "big")
    return bytes((_FINAL_TEXT, _LENGTH_64)) + length.to_bytes(8, "big")


def text_frames(messages: Iterable[bytes]) -> bytes:
    """One text frame per message (each UTF-8 text), joined for a single write."""
    parts: list[bytes] = []
    for message in messages:
        parts.append(text_frame_header(len(message)))
        parts.append(message)
    return b"".join(parts)


def close_frame(code: int) -> bytes:
    """An unmasked close frame with ``code`` and no reason, as wsproto makes a server's."""
    return bytes((_FINAL_CLOSE, 2)) + code.to_bytes(2, "big")


class ClientFramesAfterClose:
    """A client's frames after the server's close frame, walked by their headers until the
    client's own close frame has come whole.

    After its close frame a server sends nothing more (RFC 6455 section 5.5.1), so what the
    client sends meanwhile is neither answered nor kept: no payload is unmasked or parsed.
    A frame no client may send (unmasked, with reserved bits or a reserved opcode) ends the
    walk too: the connection is closed then, as after a close frame.
    """

    def __init__(self) -> None:
        self._buffer = b""
        # Payload bytes of a frame, not its close frame, still to come (skipped unread).
        self._skip = 0

    def feed(self, data: bytes) -> bool:
        """Take what the client sent next; True once the connection may be closed."""
        if self._skip >= len(data):
            self._skip -= len(data)
            return False
        buffer = self._buffer + data[self._skip :]
        self._skip = 0
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            opcode = first & _OPCODE
            if first & _RESERVED_BITS or opcode not in _CLIENT_OPCODES or not second & _MASKED:
                return True
            length = second & _LENGTH
            header = 2 if length < _LENGTH_16 else 4 if length == _LENGTH_16 else 10
            if len(buffer) < header:
                break
            if header > 2:
                length = int.from_bytes(buffer[2:header], "big")
            end = header + _MASK_BYTES + length
            if opcode == _OPCODE_CLOSE:
                if len(buffer) >= end:
                    return True
                break  # closed once it is whole: unread bytes at the close would be a reset
            if end > len(buffer):
                self._skip = end - len(buffer)
                buffer = b""
                break
            buffer = buffer[end:]
        self._buffer = buffer
        return False
