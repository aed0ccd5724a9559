"""WebSocket text frames as a server sends them (RFC 6455 section 5.2), for the watchers' path.

Pure functions, no I/O. A server's frames are not masked, so a frame is a two- to ten-byte
header and the payload as it is: a watcher's message, already encoded JSON (UTF-8), goes out
without being decoded to ``str`` and encoded again, and several frames are joined into one
write (:mod:`pm.http.watch_route`). Only what that path needs: final text frames, no
extension bits (a message without RSV1 is uncompressed even where permessage-deflate was
negotiated, RFC 7692 section 6).
"""

from __future__ import annotations

from collections.abc import Iterable

# FIN set, opcode 0x1 (text).
_FINAL_TEXT = 0x81
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
