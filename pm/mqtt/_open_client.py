"""``open_mqtt_client``: the MQTT client's lifetime as an async context manager."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from ._client import MqttClient
from ._open_connection import LastWill


@asynccontextmanager
async def open_mqtt_client(
    host: str,
    port: int,
    *,
    client_id: str,
    on_message: Callable[[str, bytes], None],
    username: str = "",
    password: str = "",
    keepalive: int = 30,
    reconnect_min_delay: float = 0.1,
    reconnect_max_delay: float = 5.0,
    max_inflight: int = 1000,
    on_connect: Callable[[int], None] | None = None,
    tls: bool = False,
    tls_ca_file: str | None = None,
    will: LastWill | None = None,
) -> AsyncIterator[MqttClient]:
    """Connect to an MQTT broker and keep the connection up until the block exits.

    Yields once the first connection is established; until then it retries with backoff
    forever, so bound it with :func:`trio.fail_after` if the broker may be absent. On exit it
    sends DISCONNECT (waiting at most a second for it to leave) and closes the socket.

    Args:
      host, port: The broker's address.
      client_id: MQTT client identifier; must be unique on the broker (a duplicate makes the
        broker drop the older connection).
      on_message: Called as ``on_message(topic, payload)`` on the trio thread for every incoming
        message. Keep it short and non-blocking (hand work to a channel with ``send_nowait``).
      username, password: Credentials; empty username sends none.
      keepalive: MQTT keepalive in seconds; a silent broker is declared lost after one to two
        keepalive periods.
      reconnect_min_delay, reconnect_max_delay: Bounds of the jittered exponential backoff.
      max_inflight: QoS 1 messages paho keeps unacknowledged before it queues locally; 0
        for no cap (paho then skips its O(outstanding) scan on every PUBACK).
      on_connect: Called as ``on_connect(generation)`` after every successful connection, once
        the subscriptions are restored (generation 1 is the first connection).
      tls: speak MQTT over TLS, verifying the broker's certificate and host name.
      tls_ca_file: PEM file of the CA certificate(s) trusted for the broker's; ``None`` or
        empty: the system's defaults. Giving one implies ``tls``.
      will: the last will the broker publishes if the connection ends without DISCONNECT
        (sent with every CONNECT, reconnects included).

    Returns:
      An async context manager yielding the :class:`MqttClient`.

    Error handling: exceptions raised by ``on_message`` or ``on_connect`` are logged and
    counted in ``client.callback_errors``, never propagated. Connection loss is handled
    internally (see the module docstring). A restored subscription refused after a reconnect
    raises :exc:`MqttSubscribeError` out of the ``async with`` (inside an ExceptionGroup, as
    for any failure of a task in a trio nursery). An unreadable ``tls_ca_file`` raises
    :exc:`OSError` (or :exc:`ssl.SSLError`) before any connection is tried.
    """
    client = MqttClient(
        host,
        port,
        client_id=client_id,
        on_message=on_message,
        on_connect=on_connect,
        username=username,
        password=password,
        keepalive=keepalive,
        reconnect_min_delay=reconnect_min_delay,
        reconnect_max_delay=reconnect_max_delay,
        max_inflight=max_inflight,
        tls=tls,
        tls_ca_file=tls_ca_file,
        will=will,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(client._run)
        try:
            yield client
        finally:
            await client._aclose()
            nursery.cancel_scope.cancel()
