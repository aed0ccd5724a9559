"""The amqtt child's entry point: parse arguments, tie to the parent, serve until SIGTERM.

Run as ``python -m pm.broker.amqtt --host 127.0.0.1 --port 1883`` (or
``--config '{"host": "127.0.0.1", "port": 0}'``). :func:`pm.broker.run_embedded_broker` starts
and supervises it and speaks :mod:`pm.broker._protocol` with it (one ready line on stdout,
SIGTERM for a clean stop, the exit statuses); nothing else in the gateway imports amqtt, so
asyncio never shares a process with trio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NamedTuple

from pm.broker._presence import PresenceTopics
from pm.broker._protocol import (
    EXIT_OK,
    EXIT_ORPHANED,
    EXIT_START_FAILED,
    cannot_listen,
    format_failure_line,
    format_ready_line,
    tie_to_parent,
)

from ._config import amqtt_config, bound_endpoint
from ._gc import GcPacer
from ._logs import log_puback_timeouts, quiet_logging, report_puback_timeouts


async def serve(
    host: str,
    port: int,
    *,
    stock: bool = False,
    auth: dict[str, str] | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    presence: PresenceTopics | None = None,
) -> int:
    """Run the broker until SIGTERM/SIGINT; print the ready line once bound.

    Args:
      host: address to bind.
      port: port to bind, 0 for any.
      stock: run amqtt's own ``Broker`` instead of :class:`PuppetmasterBroker`; only the
        benchmarks use it, to measure what our fixes change.
      auth, certfile, keyfile: see :func:`amqtt_config`.
      presence: the request and status topic templates: publish device presence
        (:class:`pm.broker.amqtt._presence_broker.PresenceBroker`); ``None``: do not.

    Returns:
      The process exit status (:data:`EXIT_OK` or :data:`EXIT_START_FAILED`).

    Error handling: a start failure (``BrokerError``: port in use, bad address) is logged on
    stderr and turned into :data:`EXIT_START_FAILED`; any other exception propagates (and
    Python exits 1 with a traceback on stderr, which the parent logs).
    """
    # Imported here so that argument errors and prctl run before the slow amqtt import.
    from amqtt.broker import Broker
    from amqtt.errors import BrokerError

    from ._broker import PuppetmasterBroker
    from ._presence_broker import PresenceBroker

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    config = amqtt_config(host, port, auth=auth, certfile=certfile, keyfile=keyfile)
    if stock:
        broker: Broker = Broker(config, loop=loop)
    else:
        broker = (
            PuppetmasterBroker(config, loop=loop)
            if presence is None
            else PresenceBroker(config, loop=loop, presence=presence)
        )
        GcPacer(broker.connections_closed, broker.connections_open).install()
    if not (auth or {}).get("password_file"):
        # amqtt's string-configured plugin loading (PluginManager._load_str_plugins) forces
        # topic filtering on even with no topic plugin, costing a coroutine call per publish
        # and per delivery; there is no config key for it, so switch it off here. With device
        # identity (a password file) the topic ACL plugin needs it.
        broker.plugins_manager._is_topic_filtering_enabled = False
    try:
        await broker.start()
    except BrokerError as error:
        cause = error.__cause__ or error
        logging.getLogger("pm.broker.child").error("cannot start broker: %s", cause)
        reason = (
            cannot_listen(host, port, cause)
            if isinstance(cause, OSError)
            else f"cannot start: {cause}"
        )
        sys.stdout.write(format_failure_line(reason))
        sys.stdout.flush()
        return EXIT_START_FAILED

    bound_host, bound_port = bound_endpoint(broker)
    sys.stdout.write(format_ready_line(bound_host, bound_port, os.getpid()))
    sys.stdout.flush()

    reporter = asyncio.ensure_future(report_puback_timeouts())
    await stop.wait()
    reporter.cancel()
    await broker.shutdown()
    log_puback_timeouts()
    return EXIT_OK


class _Arguments(NamedTuple):
    host: str
    port: int
    parent: int | None
    stock: bool
    auth: dict[str, str] | None
    certfile: str | None
    keyfile: str | None
    presence: PresenceTopics | None


def _parse_arguments(argv: Sequence[str]) -> _Arguments:
    parser = argparse.ArgumentParser(prog="python -m pm.broker.amqtt")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--config", help='JSON object, e.g. {"host": "127.0.0.1", "port": 0}')
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit at once unless this process is still our parent",
    )
    parser.add_argument(
        "--stock-amqtt",
        action="store_true",
        help="amqtt's own Broker, without our fixes (benchmarks only)",
    )
    parser.add_argument(
        "--auth",
        help="JSON object: pm.broker.amqtt._auth.plugin_config arguments (gateway password: "
        "environment variable PM_BROKER_GATEWAY_PASSWORD)",
    )
    parser.add_argument("--certfile", help="PEM certificate chain: the listener speaks TLS")
    parser.add_argument("--keyfile", help="PEM private key of --certfile")
    parser.add_argument(
        "--presence",
        help='JSON object {"request": template, "status": template}: publish device presence',
    )
    arguments = parser.parse_args(argv)
    if (arguments.certfile is None) != (arguments.keyfile is None):
        parser.error("--certfile and --keyfile go together")
    host: str = arguments.host
    port: int = arguments.port
    if arguments.config is not None:
        try:
            config = json.loads(arguments.config)
            host = str(config.get("host", host))
            port = int(config.get("port", port))
        except (ValueError, TypeError, AttributeError) as error:
            parser.error(f"--config is not a JSON object with host/port: {error}")
    if not 0 <= port <= 65535:
        parser.error(f"--port {port} is out of range")
    auth: dict[str, str] | None = None
    if arguments.auth is not None:
        try:
            auth = {str(key): str(value) for key, value in json.loads(arguments.auth).items()}
        except (ValueError, AttributeError) as error:
            parser.error(f"--auth is not a JSON object: {error}")
    presence: PresenceTopics | None = None
    if arguments.presence is not None:
        try:
            presence = PresenceTopics.from_json(arguments.presence)
        except ValueError as error:
            parser.error(str(error))
    return _Arguments(
        host,
        port,
        arguments.parent_pid,
        arguments.stock_amqtt,
        auth,
        arguments.certfile,
        arguments.keyfile,
        presence,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: arm the parent-death signal, parse arguments, run the broker.

    Args:
      argv: arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns:
      The exit status (:mod:`pm.broker._protocol`).

    Error handling: bad arguments exit 2 through argparse; a parent given by ``--parent-pid``
    that is already gone gives :data:`EXIT_ORPHANED`; if ``prctl`` is unavailable the
    broker still runs (a warning says an orphan is possible).
    """
    arguments = _parse_arguments(sys.argv[1:] if argv is None else argv)
    if not tie_to_parent(arguments.parent, lambda line: print(line, file=sys.stderr)):
        return EXIT_ORPHANED
    quiet_logging()
    return asyncio.run(
        serve(
            arguments.host,
            arguments.port,
            stock=arguments.stock,
            auth=arguments.auth,
            certfile=arguments.certfile,
            keyfile=arguments.keyfile,
            presence=arguments.presence,
        )
    )
