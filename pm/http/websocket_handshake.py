"""A WebSocket handshake read and answered without hypercorn, for the watchers' connections.

Pure functions, no I/O (:mod:`pm.http.watch_connection` does the reading and writing). Only
the plainest handshake is taken: an HTTP/1.1 ``GET`` whose head parses under the strict rules
below and asks for a WebSocket (RFC 6455 section 4.2.1). :func:`parse_watch_handshake`
returns None for anything else (a body, folded or repeated upgrade headers, bytes outside
latin-1 tokens, another HTTP version), and the connection is then served by hypercorn, as it
would have been: nothing that hypercorn accepts or refuses is decided differently here.

The answers are written as hypercorn 0.18.0 writes them through h11 (header names in lower
case, an empty reason phrase, its ``date`` and ``server`` headers last), so a client sees the
same bytes whichever path served it (``tests/test_watch_connection.py`` compares them).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from email.utils import formatdate
from functools import lru_cache

# RFC 6455 section 1.3: what the server appends to the client's key before hashing it.
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# RFC 9110 section 5.6.2: a header name is a token.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A control character in a header value (a tab is allowed): found by one regex search, not a
# Python loop over each byte (a third of the head's parsing in a py-spy profile of 3,000
# handshakes).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# The request target: an origin-form path and query, visible ASCII only.
_TARGET = re.compile(rb"/[!-~]*")
# Headers that would make the request something else than a bare handshake (a body), or
# whose repetition hypercorn would resolve in its own way: such a request goes to hypercorn.
_NOT_TAKEN = frozenset((b"content-length", b"transfer-encoding"))
_SINGLE = frozenset((b"upgrade", b"sec-websocket-key", b"sec-websocket-version", b"host"))
# How hypercorn names itself in the ``server`` header of every answer.
SERVER_HEADER = b"hypercorn-h11"


@dataclass(frozen=True, slots=True)
class WatchHandshake:
    """A WebSocket handshake as the watchers' route needs it.

    ``headers`` are as in an ASGI scope (lower-case names, values as sent); ``subprotocols``
    are those offered in ``Sec-WebSocket-Protocol``, in order; ``extensions_offered`` says
    whether the client offered any extension (permessage-deflate).
    """

    path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    key: bytes
    subprotocols: list[str]
    extensions_offered: bool


def parse_watch_handshake(head: bytes) -> WatchHandshake | None:
    """The handshake in ``head`` (a request's line and headers, without the blank line), or
    None if it is not the plainest WebSocket handshake (see the module docstring)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
        return None
    target = parts[1]
    if _TARGET.fullmatch(target) is None:
        return None
    headers: list[tuple[bytes, bytes]] = []
    seen: set[bytes] = set()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            return None  # obsolete line folding, a space before the colon, an empty line
        name = name.lower()
        value = value.strip(b" \t")
        if name in _NOT_TAKEN or (name in _SINGLE and name in seen):
            return None
        if _CONTROL.search(value) is not None:
            return None
        seen.add(name)
        headers.append((name, value))
    found = dict(headers)
    connection = {token.strip().lower() for token in found.get(b"connection", b"").split(b",")}
    if (
        b"host" not in found
        or b"upgrade" not in connection
        or found.get(b"upgrade", b"").lower() != b"websocket"
        or found.get(b"sec-websocket-version") != b"13"
        or not found.get(b"sec-websocket-key")
    ):
        return None
    path, _, query = target.partition(b"?")
    if b"%" in path:
        return None  # a percent-encoded path is hypercorn's to decode
    subprotocols = [
        offered.strip().decode("latin-1")
        for name, value in headers
        if name == b"sec-websocket-protocol"
        for offered in value.split(b",")
        if offered.strip()
    ]
    return WatchHandshake(
        path=path.decode("ascii"),
        query_string=query,
        headers=headers,
        key=found[b"sec-websocket-key"],
        subprotocols=subprotocols,
        extensions_offered=b"sec-websocket-extensions" in found,
    )


def accept_token(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID).digest())


def accept_response(key: bytes, subprotocol: str | None, now: float) -> bytes:
    """The ``101`` answer accepting a handshake, as hypercorn writes it."""
    lines = [b"HTTP/1.1 101 "]
    if subprotocol is not None:
        lines.append(b"sec-websocket-protocol: " + subprotocol.encode())
    lines += [
        b"sec-websocket-accept: " + accept_token(key),
        b"upgrade: WebSocket",
        b"connection: Upgrade",
        *_common_headers(now),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def refusal_response(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, now: float
) -> bytes:
    """An HTTP answer refusing a handshake (``headers`` in lower case), as hypercorn writes it."""
    lines = [b"HTTP/1.1 %d " % status]
    lines += [name + b": " + value for name, value in headers]
    lines += _common_headers(now)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _common_headers(now: float) -> list[bytes]:
    return [_date_header(int(now)), b"server: " + SERVER_HEADER]


@lru_cache(maxsize=2)
def _date_header(second: int) -> bytes:
    """The ``date`` header of answers written in this second: made once per second, not per
    answer (a sixth of the 101 answer's cost in a profile of 4,000 handshakes)."""
    return b"date: " + formatdate(second, usegmt=True).encode("ascii")
