"""``pm serve``: run the gateway (embedded broker, engine, HTTP API) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from rich.console import Console

from ..config import Config, ConfigError, load_config
from ..logs import LOG_FORMATS, configure_logging
from ._arguments import HelpFormatter, host_port, log_level_option
from ._console import stdout_console
from ._errors import EXIT_OK, CliError
from ._runtime import tune_garbage_collector

if TYPE_CHECKING:
    from ..gateway import Gateway


def serve_command(
    http: tuple[str, int], broker: tuple[str, int], log_level: str = "warning"
) -> list[str]:
    """The argv that runs ``pm serve`` in a child process with this interpreter (tests and
    benchmarks start gateways this way, so the gateway's cost is its own process's)."""
    return [
        sys.executable,
        "-m",
        "pm.cli",
        "serve",
        "--http",
        f"{http[0]}:{http[1]}",
        "--broker",
        f"{broker[0]}:{broker[1]}",
        "--log-level",
        log_level,
    ]


def config_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``--http`` and ``--broker`` as :func:`load_config` overrides (they win over file and env)."""
    overrides: dict[str, dict[str, Any]] = {}
    if args.http is not None:
        host, port = args.http
        overrides["http"] = {"host": host, "port": port}
    if args.broker is not None:
        host, port = args.broker
        overrides["broker"] = {"host": host, "port": port}
    return overrides


def announce(console: Console, gateway: Gateway) -> None:
    """Called once the gateway serves: where to reach it, and how to stop it."""
    embedded = gateway.config.broker.embedded
    broker = "embedded broker" if embedded else "external broker"
    console.print("[bold green]puppetmaster gateway ready[/]")
    console.print(f"  HTTP  {gateway.http_url}  (API; schema at /openapi.json)")
    console.print(f"  MQTT  {gateway.mqtt_host}:{gateway.mqtt_port}  ({broker})")
    console.print("stop with Ctrl-C (or SIGTERM)")


def startup_failure(failure: BaseException, config: Config) -> CliError | None:
    """The start-up failures people hit, as one line saying what is wrong and, where a flag
    fixes it, which; ``None`` for anything else (a bug, which keeps its traceback)."""
    from ..broker import BrokerStartError
    from ..store import StoreOpenError

    for error in _leaves(failure):
        if isinstance(error, (ConfigError, StoreOpenError)):
            # A key checked only at start (http.certfile), or a database it cannot use.
            return CliError(str(error))
        if isinstance(error, socket.gaierror):
            return CliError(
                f"cannot listen for HTTP on {config.http.host}: {error.strerror} "
                "(check --http or http.host)"
            )
        if isinstance(error, OSError) and error.errno in _LISTEN_ERRORS:
            address = f"{config.http.host}:{config.http.port}"
            return CliError(
                f"cannot listen for HTTP on {address}: {error.strerror}"
                + _LISTEN_ERRORS[error.errno]
            )
        if isinstance(error, BrokerStartError):
            # The first line says why; the rest is the child's stderr (in the log at debug).
            reason = str(error).splitlines()[0].removesuffix("; stderr:")
            if error.reason is None or os.strerror(errno.EADDRINUSE) in error.reason:
                reason += "; choose another port with --broker"
            return CliError(reason)
    return None


# The errors binding the HTTP socket can give, with what to do about each. The broker's own
# listener fails in its child process and arrives as a BrokerStartError instead.
_LISTEN_ERRORS = {
    errno.EADDRINUSE: " (another `pm serve` running? choose another port with --http)",
    errno.EADDRNOTAVAIL: " (no interface has this address; check --http or http.host)",
    errno.EACCES: " (ports below 1024 need privileges; choose another port with --http)",
}


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for child in error.exceptions for leaf in _leaves(child)]
    return [error]


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    # ConfigError reaches main(), which prints its message (naming the key) and exits 2.
    config: Config = load_config(args.config, overrides=config_overrides(args))
    if args.broker is not None and not config.broker.embedded:
        print(
            "pm serve: --broker is ignored because broker.embedded is false; "
            "the gateway connects to mqtt.host/mqtt.port",
            file=sys.stderr,
        )
    # Imported here: the server stack (quart, hypercorn, amqtt) would otherwise slow every
    # client command's start by a few hundred milliseconds.
    from ..gateway import serve_until_signalled

    tune_garbage_collector()
    console = stdout_console()
    try:
        trio.run(serve_until_signalled, config, partial(announce, console))
    except Exception as error:
        failure = startup_failure(error, config)
        if failure is None:
            raise
        raise failure from None
    console.print("gateway stopped")
    return EXIT_OK


EPILOG = """\
examples:
  pm serve
  pm serve --http 0.0.0.0:8080 --broker 0.0.0.0:1883
  pm serve --config /etc/puppetmaster.toml --log-level debug
  pm serve --log-format json    # one JSON object per log line, with job_id/task_id/device
  PM_TASKS_DEFAULT_TIMEOUT=60 pm serve

Every config key can also be set as PM_<SECTION>_<KEY> (see config.example.toml);
--http and --broker win over both the file and the environment.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the gateway: HTTP API, dispatch engine and embedded MQTT broker",
        description=(
            "Run the gateway until SIGINT (Ctrl-C) or SIGTERM, then stop gracefully: "
            "the HTTP API and WebSockets first, then jobs, MQTT and the broker."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="a TOML config file")
    parser.add_argument(
        "--http",
        type=host_port,
        metavar="HOST:PORT",
        help="where the HTTP API listens (default: http.host:http.port, 127.0.0.1:8080)",
    )
    parser.add_argument(
        "--broker",
        type=host_port,
        metavar="HOST:PORT",
        help=(
            "where the embedded MQTT broker listens "
            "(default: broker.host:broker.port, 127.0.0.1:1883)"
        ),
    )
    log_level_option(parser)
    parser.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help=(
            "text lines, or one JSON object per line whose keys include the job_id, task_id "
            "and device a line concerns (default: %(default)s)"
        ),
    )
    parser.set_defaults(run=run)
