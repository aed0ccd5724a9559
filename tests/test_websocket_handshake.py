"""The watchers' handshake parser and answers (pm/http/websocket_handshake.py): pure, no I/O.
What it does not take goes to hypercorn, so each refusal here is a request left to it."""

from __future__ import annotations

import pytest

from pm.http.websocket_handshake import (
    accept_response,
    accept_token,
    parse_watch_handshake,
    refusal_response,
)

PLAIN = [
    b"GET /jobs/7/ws?tasks=none&token=x HTTP/1.1",
    b"Host: 127.0.0.1:8080",
    b"Upgrade: websocket",
    b"Connection: keep-alive, Upgrade",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Version: 13",
    b"Sec-WebSocket-Protocol: pm.watch, pm.token.abc",
    b"Origin: http://127.0.0.1:8080",
]


def head(lines: list[bytes]) -> bytes:
    return b"\r\n".join(lines)


def test_a_plain_handshake_is_read_as_an_asgi_scope_would_hold_it() -> None:
    handshake = parse_watch_handshake(head(PLAIN))
    assert handshake is not None
    assert handshake.path == "/jobs/7/ws"
    assert handshake.query_string == b"tasks=none&token=x"
    assert handshake.key == b"dGhlIHNhbXBsZSBub25jZQ=="
    assert handshake.subprotocols == ["pm.watch", "pm.token.abc"]
    assert (b"origin", b"http://127.0.0.1:8080") in handshake.headers
    assert (b"host", b"127.0.0.1:8080") in handshake.headers
    assert not handshake.extensions_offered


def replaced(index: int, line: bytes | None) -> list[bytes]:
    lines = list(PLAIN)
    if line is None:
        del lines[index]
    else:
        lines[index] = line
    return lines


@pytest.mark.parametrize(
    "lines",
    [
        replaced(0, b"POST /jobs/7/ws HTTP/1.1"),
        replaced(0, b"GET /jobs/7/ws HTTP/1.0"),
        replaced(0, b"GET  /jobs/7/ws HTTP/1.1"),
        replaced(0, b"GET http://x/jobs/7/ws HTTP/1.1"),
        replaced(0, b"GET /jobs/%37/ws HTTP/1.1"),
        replaced(1, None),  # no Host
        replaced(2, b"Upgrade: h2c"),
        replaced(3, b"Connection: keep-alive"),
        replaced(4, None),  # no key
        replaced(5, b"Sec-WebSocket-Version: 8"),
        [*PLAIN, b"Content-Length: 0"],
        [*PLAIN, b"Transfer-Encoding: chunked"],
        [*PLAIN, b"Upgrade: websocket"],  # repeated
        [*PLAIN, b" folded continuation"],
        [*PLAIN, b"Bad Name: x"],
        [*PLAIN, b"X-Control: a\x00b"],
        [*PLAIN, b""],
    ],
)
def test_anything_but_a_plain_handshake_is_left_to_hypercorn(lines: list[bytes]) -> None:
    assert parse_watch_handshake(head(lines)) is None


def test_an_extension_offer_is_noted() -> None:
    lines = [*PLAIN, b"Sec-WebSocket-Extensions: permessage-deflate"]
    handshake = parse_watch_handshake(head(lines))
    assert handshake is not None and handshake.extensions_offered


def test_accept_token_of_rfc_6455() -> None:
    # RFC 6455 section 1.3's example.
    assert accept_token(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_answers_are_written_as_hypercorn_writes_them() -> None:
    # 2026-12-01 00:00:00 UTC; the bytes hypercorn 0.18.0 wrote for the same answers
    # (tests/test_watch_connection.py compares both paths over a real server).
    now = 1_796_083_200.0
    assert accept_response(b"dGhlIHNhbXBsZSBub25jZQ==", "pm.watch", now) == (
        b"HTTP/1.1 101 \r\nsec-websocket-protocol: pm.watch\r\n"
        b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nupgrade: WebSocket\r\n"
        b"connection: Upgrade\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\n"
        b"server: hypercorn-h11\r\n\r\n"
    )
    body = b'{"message":"no job 999"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"24")]
    assert refusal_response(404, headers, body, now) == (
        b"HTTP/1.1 404 \r\ncontent-type: application/json\r\ncontent-length: 24\r\n"
        b"date: Tue, 01 Dec 2026 00:00:00 GMT\r\nserver: hypercorn-h11\r\n\r\n" + body
    )
