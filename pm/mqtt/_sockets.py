"""Socket checks of a connection's loops: corking, and whether bytes wait to be read."""

from __future__ import annotations

import socket
import ssl


def set_cork(sock: socket.socket, corked: bool) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(corked))
    except OSError:
        pass  # the socket is closed or failed: loop_write() reports that itself


def has_decrypted_bytes(sock: socket.socket) -> bool:
    """TLS: whether the SSL object holds decrypted bytes not yet read (never, for plain TCP)."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


def has_pending_bytes(sock: socket.socket) -> bool:
    if has_decrypted_bytes(sock):
        return True
    try:
        # b"" (EOF) counts as pending: loop_read() must see it to report the loss. For TLS this
        # peeks at the raw socket (SSLSocket.recv refuses flags): encrypted bytes, perhaps only
        # part of a record, which loop_read() then reports as "nothing yet".
        socket.socket.recv(sock, 1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True
