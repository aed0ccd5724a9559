"""The amqtt broker's configuration (one listener, an auth plugin) and its bound address."""

from __future__ import annotations

import socket
from typing import Any

# Only an auth plugin: amqtt refuses every client (CONNACK 5) when no auth plugin answers, and
# its default EventLogger/PacketLogger/BrokerSys plugins roughly halve throughput.
_PLUGINS: dict[str, dict[str, Any]] = {
    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
}


def amqtt_config(
    host: str,
    port: int,
    *,
    auth: dict[str, str] | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> dict[str, Any]:
    """Build the amqtt broker configuration: one TCP listener, its auth plugins, nothing else.

    Args:
      host: address to bind; IPv6 literals are written without brackets because amqtt's
        ``Broker._split_bindaddr_port`` keeps the brackets, which ``getaddrinfo`` rejects, while
        its ``rsplit(":", 1)`` handles ``::1:1883`` correctly.
      port: port to bind; 0 lets the kernel choose.
      auth: ``None`` for anonymous access (benchmarks of the bare broker), else the keyword
        arguments of :func:`pm.broker.amqtt._auth.plugin_config` (the gateway's reserved
        identity, and with a password file device identity and topic ACL).
      certfile, keyfile: PEM certificate chain and private key; both given, the listener
        speaks only TLS (amqtt's ``_create_ssl_context``: client certificates optional).

    Returns:
      A dictionary for ``amqtt.broker.Broker(config=...)``.
    """
    # max_connections 0 means no semaphore on accept (amqtt: > 0 enables one).
    listener: dict[str, Any] = {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}
    if certfile and keyfile:
        listener.update(ssl=True, certfile=certfile, keyfile=keyfile)
    if auth is None:
        plugins = dict(_PLUGINS)
    else:
        from ._auth import plugin_config

        plugins = plugin_config(**auth)
    return {"listeners": {"default": listener}, "plugins": plugins}


def bound_endpoint(broker: Any) -> tuple[str, int]:
    """Return the (host, port) the broker's TCP listener actually bound.

    amqtt keeps no record of the bound port, so we read it from the asyncio server's sockets;
    this is the only place that touches amqtt internals (``Broker._servers``, ``Server.instance``).

    Args:
      broker: a started ``amqtt.broker.Broker``.

    Returns:
      The first listening socket's address. With port 0 and a host name that resolves to both
      IPv4 and IPv6, each socket gets its own port; the first is reported.

    Error handling: raises :class:`RuntimeError` if no TCP listener socket is found.
    """
    for server in broker._servers.values():
        sockets = getattr(server.instance, "sockets", None) or ()
        for sock in sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                address = sock.getsockname()
                return str(address[0]), int(address[1])
    raise RuntimeError("amqtt started without a bound TCP listener")
