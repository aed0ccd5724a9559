"""``pm simulate``: a fleet of simulated Sanji devices, for trying the gateway without hardware."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from ..config import load_config
from ..protocol import InvalidDeviceId
from ..simulator import (
    DeviceStats,
    Simulator,
    SimulatorSettings,
    generate_mac_ids,
    read_device_ids,
    run_simulator,
)
from ._arguments import (
    HelpFormatter,
    fleet_behaviour_options,
    host_port,
    log_level_option,
    non_negative_float,
    positive_int,
    probability,
)
from ._console import stdout_console
from ._errors import EXIT_OK, CliError
from ._runtime import tune_garbage_collector

DEFAULT_DEVICES = 10
# Ids printed at start, enough to copy one into `pm submit --to` without flooding the screen.
IDS_SHOWN = 5
# Where --device-password is read from when not given (a command line is visible in `ps`).
DEVICE_PASSWORD_ENV = "PM_DEVICE_PASSWORD"
# Seconds without a connected fleet before saying the broker may be missing (and how often).
CONNECT_WARNING_INTERVAL = 3.0


def device_ids(args: argparse.Namespace) -> list[str]:
    if args.ids_file is None:
        return generate_mac_ids(args.devices)
    try:
        ids = read_device_ids(args.ids_file)
    except OSError as error:
        raise CliError(f"cannot read --ids-file {args.ids_file}: {error.strerror}") from None
    except InvalidDeviceId as error:
        raise CliError(f"--ids-file {args.ids_file}: {error}") from None
    if not ids:
        raise CliError(f"--ids-file {args.ids_file} holds no device ids")
    return ids


def settings_from(args: argparse.Namespace) -> SimulatorSettings:
    """Broker address and topic templates from the gateway's config, so that by default the
    simulator talks to the broker `pm serve` starts, on the topics it uses."""
    config = load_config(args.config)
    host, port = args.mqtt if args.mqtt is not None else config.mqtt_endpoint
    # The embedded broker takes anonymous clients; an external one may want the gateway's
    # credentials.
    external = not config.broker.embedded
    device_password = args.device_password or os.environ.get(DEVICE_PASSWORD_ENV, "")
    if config.broker.embedded and config.broker.auth and not device_password:
        raise CliError(
            "broker.auth is on: give --device-password (or $PM_DEVICE_PASSWORD), the password "
            "the simulated ids were added with (`pm devices add ID --password P`)"
        )
    # The broker's TLS follows the gateway's config unless --tls/--tls-ca say otherwise; the
    # embedded broker's own certificate is the natural trust anchor for a local simulation.
    tls_ca_file = args.tls_ca or (config.mqtt_ca_file if config.mqtt_tls else "")
    return SimulatorSettings(
        host=host,
        port=port,
        devices=device_ids(args),
        latency=args.latency[0],
        latency_max=args.latency[1],
        error_rate=args.error_rate,
        error_code=args.error_code,
        silent_rate=args.silent_rate,
        progress_steps=args.progress_steps,
        connections=args.connections,
        request_topic=config.topics.request,
        response_topic=config.topics.response,
        status_topic=config.topics.status,
        status=not args.v1,
        offline_rate=args.offline_rate,
        flap_interval=args.flap_interval,
        seed=args.seed,
        username=config.mqtt.username if external else "",
        password=config.mqtt.password if external else "",
        device_password=device_password,
        tls=args.tls or bool(tls_ca_file) or config.mqtt_tls,
        tls_ca_file=tls_ca_file,
        track_request_ids=args.track_redeliveries,
    )


def write_ids(path: str, devices: list[str]) -> None:
    """``--ids-out``: every simulated id, one per line (what ``--ids-file`` reads back).

    Error handling: :class:`CliError` naming the file."""
    try:
        Path(path).write_text("".join(f"{device}\n" for device in devices), encoding="utf-8")
    except OSError as error:
        raise CliError(f"cannot write --ids-out {path}: {error.strerror}") from None


def stats_line(simulator: Simulator) -> str:
    stats: DeviceStats = simulator.stats
    return (
        f"received {stats.received} · answered {stats.answered} · errors {stats.errors} · "
        f"silent {stats.silent} · overlaps {stats.overlaps} · "
        f"duplicates {stats.duplicates} · redelivered {stats.redelivered} · "
        f"connections up {simulator.connected}"
    )


async def simulate(settings: SimulatorSettings, console: Console, stats_interval: float) -> None:
    """Run the fleet until SIGINT/SIGTERM, reporting its statistics when they change."""
    address = f"{settings.host}:{settings.port}"
    count = len(settings.devices)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            console.print(f"connecting {count} simulated devices to {address} …")
            warning_scope = trio.CancelScope()
            nursery.start_soon(_warn_while_connecting, console, address, warning_scope)
            simulator: Simulator = await nursery.start(run_simulator, settings)
            warning_scope.cancel()
            shown = ", ".join(simulator.devices[:IDS_SHOWN])
            more = f" … ({count} in all)" if count > IDS_SHOWN else ""
            console.print(f"[green]{count} devices connected[/] to {address}")
            console.print(f"  ids: {shown}{more}")
            console.print(
                f"  try: pm submit --resource /system/status --to {simulator.devices[0]} --watch",
            )
            console.print("stop with Ctrl-C")
            last = ""
            try:
                while True:
                    await trio.sleep(stats_interval)
                    # Only changes are printed: an idle fleet should not scroll the terminal away.
                    line = stats_line(simulator)
                    if line != last:
                        console.print(line)
                        last = line
            finally:
                # The final figures, also when stopped between two checks (soak tests read it).
                console.print(f"at stop: {stats_line(simulator)}")


async def _warn_while_connecting(console: Console, address: str, scope: trio.CancelScope) -> None:
    # The MQTT client retries forever; without this a missing broker looks like a hang.
    with scope:
        while True:
            await trio.sleep(CONNECT_WARNING_INTERVAL)
            console.print(
                f"[yellow]still connecting to the MQTT broker at {address}: "
                "is `pm serve` running (or --mqtt right)?[/]",
            )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    settings = settings_from(args)
    if args.ids_out is not None:
        write_ids(args.ids_out, settings.devices)
    tune_garbage_collector()
    console = stdout_console()
    trio.run(simulate, settings, console, args.stats_interval)
    console.print("simulator stopped")
    return EXIT_OK


EPILOG = """\
examples:
  pm simulate                                   # 10 devices 02:00:00:00:00:00 … :09
  pm simulate --devices 1000 --connections 10 --latency 0.5
  pm simulate --ids-file fleet.txt --error-rate 0.1 --error-code 503 --seed 7
  pm simulate --progress-steps 3 --latency 2    # 206 progress answers before the last one
  pm simulate --devices 100 --offline-rate 0.2 --flap-interval 30 --ids-out fleet.txt

Then, in another terminal: pm submit --resource /system/status --to 02:00:00:00:00:00 --watch
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run simulated devices that answer the gateway's commands",
        description=(
            "Connect simulated Sanji devices to the MQTT broker and answer every request, "
            "until Ctrl-C. Prints a few device ids to use with `pm submit --to`, then the "
            "fleet's statistics whenever they change."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    fleet = parser.add_mutually_exclusive_group()
    fleet.add_argument(
        "--devices",
        type=positive_int,
        default=DEFAULT_DEVICES,
        metavar="N",
        help="simulate N devices with generated MAC ids (default: %(default)s)",
    )
    fleet.add_argument(
        "--ids-file", metavar="FILE", help="simulate the device ids in FILE, one per line"
    )
    fleet_behaviour_options(parser)
    parser.add_argument(
        "--silent-rate",
        type=probability,
        default=0.0,
        metavar="R",
        help="share of requests never answered, 0 to 1 (default: %(default)s)",
    )
    parser.add_argument(
        "--progress-steps",
        type=int,
        default=0,
        metavar="K",
        help="interim 206 progress answers before the final one (default: %(default)s)",
    )
    parser.add_argument(
        "--mqtt",
        type=host_port,
        metavar="HOST:PORT",
        help="the MQTT broker (default: where the gateway's config puts it, 127.0.0.1:1883)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the gateway's config file, for its broker address and topic templates",
    )
    parser.add_argument(
        "--device-password",
        metavar="P",
        help="with broker.auth: every device logs in as its id with P, one connection each "
        f"(default: ${DEVICE_PASSWORD_ENV}, which keeps P out of `ps`)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="connect with MQTT over TLS even if the gateway's config does not say so "
        "(trusting --tls-ca, else the config's mqtt.ca_file or broker.certfile, else the "
        "system's CAs)",
    )
    parser.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="connect with MQTT over TLS, trusting the CA certificate(s) in FILE (PEM), e.g. "
        "the embedded broker's broker.certfile (default: mqtt.ca_file, else broker.certfile)",
    )
    parser.add_argument(
        "--ids-out",
        metavar="FILE",
        help="write every simulated device id to FILE, one per line, before connecting",
    )
    parser.add_argument(
        "--v1",
        action="store_true",
        help="behave as protocol v1 devices: no retained online birth and no offline last "
        "will on the status topic (the embedded amqtt broker still reports their presence)",
    )
    parser.add_argument(
        "--offline-rate",
        type=probability,
        default=0.0,
        metavar="R",
        help="share of the devices kept offline, 0 to 1 (default: %(default)s)",
    )
    parser.add_argument(
        "--flap-interval",
        type=non_negative_float,
        default=0.0,
        metavar="S",
        help="with --offline-rate: choose the offline devices again every S seconds, so "
        "devices go offline and come back (default: 0, chosen once)",
    )
    parser.add_argument(
        "--track-redeliveries",
        action="store_true",
        help="remember every request id each device received and count those received again "
        "(memory grows with every request; for soak tests)",
    )
    parser.add_argument(
        "--stats-interval",
        type=non_negative_float,
        default=3.0,
        metavar="S",
        help="seconds between statistics checks (default: %(default)s)",
    )
    log_level_option(parser)
    parser.set_defaults(run=run)
