"""``http.websocket_compression``: whether the gateway accepts permessage-deflate (RFC 7692).

Every browser asks for permessage-deflate on every WebSocket, and hypercorn (0.18.0) always
accepts it: its ``Handshake.accept`` offers ``PerMessageDeflate()`` unconditionally and has no
setting. A compressing watcher costs the gateway a zlib stream per connection (memory) and a
deflate of every message it is sent (CPU, on the one trio thread that also dispatches): see
docs/dashboard.md for the figures and ``bench/watchers.py --compress`` for the command.

With compression off, :class:`ExtensionOfferDroppingStream` removes the client's
``Sec-WebSocket-Extensions`` header from the handshake request before hypercorn reads it: the
offer is never seen, so the answer accepts no extension and the client sends and receives
plain frames (every client must accept that: an offer is only an offer). The choice is per
server (it is read from that server's hypercorn config), so several gateways in one process
(the tests) may differ.

hypercorn is pinned exactly; ``tests/test_private_names.py`` pins the sources this relies on
(``WSStream.handle``, ``Handshake.accept`` and the ``_create_stream`` that build the streams).

The watchers' plain handshakes do not reach hypercorn at all (:mod:`pm.http.watch_connection`):
with compression off their answer accepts no extension either; with it on, a handshake that
offers one is left to hypercorn.

Error handling: none needed; a request without the header passes unchanged.
"""

from __future__ import annotations

import dataclasses

import hypercorn.config
from hypercorn.protocol import h2, h11, ws_stream
from hypercorn.protocol.events import Event, Request

# The attribute of a hypercorn config that carries the choice (hypercorn has none of its own).
_ATTRIBUTE = "pm_websocket_compression"
_EXTENSIONS_HEADER = b"sec-websocket-extensions"


def set_websocket_compression(server_config: hypercorn.config.Config, allowed: bool) -> None:
    """Record on ``server_config`` whether its server accepts permessage-deflate."""
    setattr(server_config, _ATTRIBUTE, allowed)


def websocket_compression(server_config: hypercorn.config.Config) -> bool:
    """Whether a server with this config accepts permessage-deflate (hypercorn's default: yes)."""
    allowed = getattr(server_config, _ATTRIBUTE, True)
    assert isinstance(allowed, bool)
    return allowed


class ExtensionOfferDroppingStream(ws_stream.WSStream):
    """hypercorn's WebSocket stream, blind to the client's extension offer when its server's
    config says compression is off."""

    async def handle(self, event: Event) -> None:
        if isinstance(event, Request) and not websocket_compression(self.config):
            headers = [
                (name, value) for name, value in event.headers if name.lower() != _EXTENSIONS_HEADER
            ]
            event = dataclasses.replace(event, headers=headers)
        await super().handle(event)


def use_extension_offer_dropping_streams() -> None:
    """Make hypercorn build its WebSocket streams as :class:`ExtensionOfferDroppingStream`.

    hypercorn's HTTP/1.1 and HTTP/2 protocols look ``WSStream`` up in their own modules when
    a WebSocket request arrives: the name is replaced there, once per process (idempotent).
    """
    h11.WSStream = ExtensionOfferDroppingStream  # type: ignore[misc]
    h2.WSStream = ExtensionOfferDroppingStream  # type: ignore[misc]
