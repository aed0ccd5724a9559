"""``pm bench``'s simulated fleet: the broker it connects to, a check that the broker takes
it, and the wait until the gateway sees every device online.

The fleet is :mod:`pm.simulator` run in the benchmark's own trio loop (the reference
device, not a second simulator).

Error handling: every way the fleet cannot start is a one-line :class:`CliError` (exit 2): a
malformed ``--broker``, a broker that refuses or never answers the TCP connection, one that
takes no MQTT session from these credentials, a fleet not online at the gateway in time
(saying how many were).
"""

from __future__ import annotations

import argparse
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple
from urllib.parse import urlsplit

import trio

from ..mqtt import open_mqtt_client
from ..simulator import Simulator, SimulatorSettings, generate_mac_ids, run_simulator
from ._errors import CliError
from ._gateway_client import AsyncGatewayClient

# The bench fleet's ids: locally administered MACs no real device has, and a prefix
# `GET /devices?q=` finds them by (a previous bench's devices are the same ids, by design).
DEVICE_ID_PREFIX = "02:be"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
BROKER_PASSWORD_ENV = "PM_BROKER_PASSWORD"
DEVICE_PASSWORD_ENV = "PM_DEVICE_PASSWORD"
# Seconds the broker has to take the TCP connection, then one MQTT session.
BROKER_CHECK_TIMEOUT = 10.0
# How often the gateway is asked how many of the fleet it sees online.
PRESENCE_POLL_INTERVAL = 0.2


class BrokerAddress(NamedTuple):
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def broker_address(text: str) -> BrokerAddress:
    """``--broker mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]`` (ports 1883 and 8883 by
    default) as an argparse ``type``."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected mqtt://HOST[:PORT], got {text!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        raise argparse.ArgumentTypeError(
            f"expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got {text!r}"
        )
    return BrokerAddress(parts.hostname, port or DEFAULT_PORTS[scheme], scheme == "mqtts")


def default_broker(gateway_url: str) -> BrokerAddress:
    """The broker ``pm serve`` embeds: port 1883 on the gateway's host."""
    host = urlsplit(gateway_url).hostname or "127.0.0.1"
    return BrokerAddress(host, DEFAULT_PORTS["mqtt"], False)


def fleet_settings(args: argparse.Namespace, broker: BrokerAddress) -> SimulatorSettings:
    """The simulated fleet ``pm bench`` runs, from its options."""
    low, high = args.latency
    return SimulatorSettings(
        host=broker.host,
        port=broker.port,
        devices=bench_device_ids(args.devices),
        latency=low,
        latency_max=high,
        error_rate=args.error_rate,
        error_code=args.error_code,
        connections=args.connections,
        seed=args.seed,
        username=args.broker_username or "",
        password=args.broker_password or os.environ.get(BROKER_PASSWORD_ENV, ""),
        device_password=args.device_password or os.environ.get(DEVICE_PASSWORD_ENV, ""),
        tls=broker.tls or bool(args.broker_ca),
        tls_ca_file=args.broker_ca or "",
    )


def bench_device_ids(count: int) -> list[str]:
    """``count`` ids under :data:`DEVICE_ID_PREFIX`."""
    return generate_mac_ids(count, prefix=DEVICE_ID_PREFIX)


class _LastLogLine(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.line = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.line = record.getMessage()


@contextmanager
def _mqtt_log_captured() -> Iterator[_LastLogLine]:
    """The MQTT client's log kept (its last line says why a connect failed), not printed."""
    logger = logging.getLogger("pm.mqtt")
    handler = _LastLogLine()
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.level, logger.propagate = saved


async def check_broker(settings: SimulatorSettings, broker: BrokerAddress) -> None:
    """One TCP connection, then one MQTT session with the fleet's credentials and TLS.

    Error handling: :class:`CliError` naming the broker and what failed.
    """
    try:
        with trio.fail_after(BROKER_CHECK_TIMEOUT):
            stream = await trio.open_tcp_stream(broker.host, broker.port)
    except trio.TooSlowError:
        raise CliError(
            f"the MQTT broker at {broker} did not take a TCP connection within "
            f"{BROKER_CHECK_TIMEOUT:g} s"
        ) from None
    except OSError as error:
        raise CliError(f"cannot reach the MQTT broker at {broker}: {_reason(error)}") from None
    await stream.aclose()
    login = settings.devices[0] if settings.device_password else settings.username
    with _mqtt_log_captured() as log, trio.move_on_after(BROKER_CHECK_TIMEOUT) as waiting:
        try:
            async with open_mqtt_client(
                settings.host,
                settings.port,
                client_id=f"pm-bench-check-{uuid.uuid4().hex[:8]}",
                on_message=lambda topic, payload: None,
                username=login,
                password=settings.device_password or settings.password,
                tls=settings.tls,
                tls_ca_file=settings.tls_ca_file or None,
            ):
                pass
        except OSError as error:  # ssl.SSLError included: read before connecting
            raise CliError(f"cannot use --broker-ca {settings.tls_ca_file}: {error}") from None
    if waiting.cancelled_caught:
        why = f" (last: {log.line})" if log.line else ""
        raise CliError(
            f"the MQTT broker at {broker} took no MQTT session within {BROKER_CHECK_TIMEOUT:g} s"
            f"{why}: check --broker-username/$PM_BROKER_PASSWORD, $PM_DEVICE_PASSWORD, "
            "mqtts:// and --broker-ca"
        )


def _reason(error: OSError) -> str:
    """Why a connect failed: trio wraps each address's attempt in a group under a generic
    "all attempts to connect ... failed"; the first attempt's reason says more."""
    cause = error.__cause__
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return error.strerror or str(error)


async def online_count(gateway: AsyncGatewayClient) -> int:
    """How many of the bench fleet's devices the gateway sees online."""
    response = await gateway.request(
        "GET",
        "/devices",
        params={"presence": "online", "q": DEVICE_ID_PREFIX + ":", "limit": 1},
    )
    return int(response.headers.get("X-Total-Count", "0"))


async def start_fleet(
    nursery: trio.Nursery,
    settings: SimulatorSettings,
    gateway: AsyncGatewayClient,
    online_within: float,
) -> Simulator:
    """Connect the fleet in ``nursery`` and wait until the gateway sees all of it online
    (it learns presence from the devices' retained births, through its own broker).

    Error handling: :class:`CliError` if that takes more than ``online_within`` seconds.
    """
    count = len(settings.devices)
    with trio.move_on_after(online_within):
        simulator: Simulator = await nursery.start(run_simulator, settings)
        while True:
            if await online_count(gateway) >= count:
                return simulator
            await trio.sleep(PRESENCE_POLL_INTERVAL)
    online = await online_count(gateway)
    raise CliError(
        f"the fleet did not come online within {online_within:g} s: {online} of {count} devices "
        "online at the gateway (is --broker the broker the gateway uses?)"
    )
