"""``pm bench``: a load test of a deployment (any gateway and broker) with simulated devices.

It checks the gateway (its version, the token) and the broker (a TCP connection, one MQTT
session), connects the simulated fleet in this process (:mod:`pm.simulator`), waits until
the gateway sees every device online, posts one job of ``--tasks`` tasks (several commands
per device when there are more tasks than devices: each device takes them in order), follows
it over its WebSocket with the live bar of ``pm watch``, then reads every task back and
prints tasks/s, task latency and outcomes (:mod:`pm.bench_summary` defines them), writing
``bench.json`` and ``bench.png`` (:mod:`pm.cli._bench_output`).

Error handling: an unreachable or refusing gateway or broker, a refused token, a fleet not
online in time, a job the gateway refuses: one line on stderr, exit 2, the fleet
disconnected. Interrupted (Ctrl-C) or cut off from the job's stream once the job is posted,
it deletes the job first (see :func:`_remove_job`). A job that ends other than
resolved (timeout, cancelled, aborted) exits 1 after its summary; answers with error codes
are what ``--error-rate`` asks for and do not.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import trio
from rich.console import Console
from rich.markup import escape

from ..bench_summary import parse_timestamp, sample_of, summarize, timeline
from ..schemas import JobView, TaskView
from ..simulator import Simulator
from ._arguments import (
    HelpFormatter,
    fleet_behaviour_options,
    gateway_ssl_context,
    gateway_token,
    gateway_url,
    log_level_option,
    positive_float,
    positive_int,
    url_options,
)
from ._bench_fleet import (
    BROKER_PASSWORD_ENV,
    DEVICE_PASSWORD_ENV,
    broker_address,
    check_broker,
    default_broker,
    fleet_settings,
    start_fleet,
)
from ._bench_output import BenchRun, report_lines, write_outputs
from ._console import stdout_console
from ._errors import EXIT_FAILED, EXIT_OK, CliError
from ._gateway_client import AsyncGatewayClient
from ._job_options import add_options, add_timeout_options, apply_options
from ._submit import parse_data
from ._watch import follow_job

DEFAULT_DEVICES = 100
# Seconds the job's deletion (when a run is interrupted) and the fleet's leaving may take.
CANCEL_GRACE = 5.0
# Options whose values bench.json never shows.
SECRET_OPTIONS = frozenset({"--token", "--broker-password", "--device-password"})
# Tasks read back per request (the API's largest page).
TASK_PAGE = 1000
_decode_tasks = msgspec.json.Decoder(list[TaskView]).decode
_decode_job = msgspec.json.Decoder(JobView).decode


def job_body(args: argparse.Namespace, devices: list[str]) -> dict[str, Any]:
    """The ``POST /jobs`` body: ``args.tasks`` tasks over ``devices``, one batch entry per
    round through the fleet (the last one shorter), rollout options on top."""
    data = parse_data(args.data) if args.data is not None else {}
    rounds = math.ceil(args.tasks / len(devices))
    batch = []
    for number in range(rounds):
        entry: dict[str, Any] = {
            "method": args.method,
            "resource": args.resource,
            "data": data,
            "__destination": devices[: min(len(devices), args.tasks - number * len(devices))],
        }
        if args.task_timeout is not None:
            entry["timeout"] = args.task_timeout
        batch.append(entry)
    return apply_options({"batch": batch}, args)


async def gateway_version(gateway: AsyncGatewayClient) -> str:
    """The gateway's release, from its ``/openapi.json`` (also proves the API answers)."""
    document = (await gateway.request("GET", "/openapi.json")).json()
    info = document.get("info") if isinstance(document, dict) else None
    version = info.get("version") if isinstance(info, dict) else None
    return version if isinstance(version, str) else "unknown"


async def read_tasks(gateway: AsyncGatewayClient, job_id: int, total: int) -> list[TaskView]:
    """Every task of the job, a page at a time."""
    tasks: list[TaskView] = []
    for offset in range(0, total, TASK_PAGE):
        response = await gateway.request(
            "GET", f"/jobs/{job_id}/tasks", params={"limit": TASK_PAGE, "offset": offset}
        )
        tasks.extend(_decode_tasks(response.content))
    return tasks


async def run_bench(args: argparse.Namespace, console: Console) -> int:
    """The whole benchmark (see the module docstring); returns the exit status. ``args.out``
    must exist (:func:`run` makes it)."""
    if args.tasks is None:
        args.tasks = args.devices
    url = gateway_url(args)
    token, ssl_context = gateway_token(args), gateway_ssl_context(args)
    broker = args.broker if args.broker is not None else default_broker(url)
    settings = fleet_settings(args, broker)
    body = job_body(args, settings.devices)
    out = Path(args.out)
    async with AsyncGatewayClient(url, token=token, ssl_context=ssl_context) as gateway:
        # A token the gateway refuses is found here, before any device connects.
        version = await gateway_version(gateway)
        await check_broker(settings, broker)
        try:
            async with trio.open_nursery() as nursery:
                count = len(settings.devices)
                console.print(f"connecting {count} simulated devices to {broker} …")
                simulator = await start_fleet(nursery, settings, gateway, args.online_timeout)
                console.print(f"{count} devices online at {url}; posting {args.tasks} tasks")
                started = time.time()
                created = (await gateway.request("POST", "/jobs", json=body)).json()
                try:
                    # Snapshots only: the tasks are read once at the end, and a watcher's task
                    # messages cost the gateway under test (bench/README.md, watchers).
                    await follow_job(url, created["id"], console, token, ssl_context, tasks="none")
                except BaseException:
                    await _remove_job(gateway, created["id"], console)
                    await _leave(simulator)
                    raise
                wall_seconds = time.time() - started
                job = _decode_job((await gateway.request("GET", f"/jobs/{created['id']}")).content)
                job.collection = msgspec.UNSET  # task ids: the samples hold every task
                tasks = await read_tasks(gateway, job.id, job.total_count)
                await _leave(simulator)
                nursery.cancel_scope.cancel()
        except ExceptionGroup as group:
            raise _only_cli_error(group) from None
    created_at = parse_timestamp(job.created_at)
    samples = [sample_of(task, created_at) for task in tasks]
    bucket, points = timeline(samples)
    run = BenchRun(
        command=redacted_command(sys.argv[1:]),
        started_at=datetime.fromtimestamp(started, UTC).isoformat(),
        parameters=_parameters(args, broker, body),
        gateway={"url": url, "version": version},
        wall_seconds=wall_seconds,
        job=job,
        summary=summarize(samples),
        bucket_seconds=bucket,
        timeline=points,
        fleet=simulator.stats,
        samples=samples,
    )
    for line in report_lines(run):
        console.print(line)
    for line in write_outputs(run, out):
        console.print(line)
    return EXIT_OK if job.status == "resolved" else EXIT_FAILED


async def _remove_job(gateway: AsyncGatewayClient, job_id: int, console: Console) -> None:
    """Delete the job when the run stops before it ends (Ctrl-C, a lost stream). Its fleet
    is leaving: a graceful cancel would let its tasks in flight wait out their timeout,
    holding the next run's devices (one command at a time each) until then; DELETE ends
    them at once. Best effort, bounded and shielded (the run may be being cancelled)."""
    with trio.move_on_after(CANCEL_GRACE, shield=True):
        try:
            await gateway.request("DELETE", f"/jobs/{job_id}")
        except CliError as error:
            console.print(f"could not delete job {job_id}: {escape(error.message)}")
            return
        console.print(f"deleted job {job_id}: its simulated fleet is leaving")


async def _leave(simulator: Simulator) -> None:
    """The fleet says it goes offline: with an external broker the devices' retained
    ``online`` births would otherwise outlive the run, and the gateway would go on showing
    them online. Bounded and shielded, as :func:`_remove_job`."""
    with trio.move_on_after(CANCEL_GRACE, shield=True):
        await simulator.leave()


def _only_cli_error(group: ExceptionGroup[Exception]) -> Exception:
    """The :class:`CliError` that stopped the fleet's nursery, out of trio's group, so that
    it prints as one line; any other failure (a bug) is returned whole, traceback and all."""
    cli_errors, others = group.split(CliError)
    if cli_errors is None or others is not None:
        return group
    while isinstance(cli_errors, ExceptionGroup):
        cli_errors = cli_errors.exceptions[0]
    return cli_errors


def redacted_command(argv: list[str]) -> str:
    """The command line for bench.json, with the value of every secret option hidden."""
    shown, hide_next = ["pm"], False
    for argument in argv:
        name, equals, _ = argument.partition("=")
        if hide_next:
            shown.append("REDACTED")
        elif equals and name in SECRET_OPTIONS:
            shown.append(f"{name}=REDACTED")
        else:
            shown.append(argument)
        hide_next = not hide_next and argument in SECRET_OPTIONS
    return shlex.join(shown)


def _parameters(args: argparse.Namespace, broker: object, body: dict[str, Any]) -> dict[str, Any]:
    """What the run was asked, for bench.json (never a password or token)."""
    low, high = args.latency
    return {
        "devices": args.devices,
        "connections": args.connections,
        "tasks": args.tasks,
        "latency": [low, high],
        "errorRate": args.error_rate,
        "errorCode": args.error_code,
        "method": args.method,
        "resource": args.resource,
        "seed": args.seed,
        "broker": str(broker),
        "jobOptions": {name: value for name, value in body.items() if name != "batch"},
    }


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CliError(f"cannot create --out {args.out}: {error.strerror}") from None
    try:
        return trio.run(run_bench, args, stdout_console())
    except BaseExceptionGroup as group:
        # Ctrl-C lands in whichever task runs, inside the fleet's nursery: as a group.
        if group.subgroup(KeyboardInterrupt) is not None and group.subgroup(Exception) is None:
            raise KeyboardInterrupt from None
        raise


EPILOG = f"""\
examples:
  pm bench --devices 1000 --tasks 10000                  # against pm serve on this machine
  pm bench --url https://gw:8443 --ca-file gw.pem --broker mqtts://gw:8883 \\
           --broker-ca broker.pem --devices 500 --connections 10 --latency 10..50ms \\
           --error-rate 0.05 --max-in-flight 200 --out results/
  PM_TOKEN=... pm bench --url http://gw:8080 --broker mqtt://broker:1883 \\
           --broker-username bench --tasks 5000 --rate 60000

The fleet's device ids are 02:be:00:00:00:00, 02:be:00:00:00:01, ... (the gateway must
accept them: with broker.auth, add them with `pm devices add ID --password P` and give P
as ${DEVICE_PASSWORD_ENV}). Passwords come from ${BROKER_PASSWORD_ENV} and
${DEVICE_PASSWORD_ENV} when not given: a command line is visible to other users.

Figures (gateway clock, over the tasks a device answered): settle latency, the job's
createdAt to each task's finishAt (with its wait behind the earlier tasks of its device and
the rollout's pacing); answer latency, each task's sentAt to its finishAt (broker both ways,
the device, the gateway's handling), plotted over time in bench.png; tasks/s, settled tasks
over createdAt to the last finishAt. bench.png needs matplotlib (the bench extra).
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        parents=[url_options()],
        # A short usage: a mistyped value's error stays readable (--help lists every option).
        usage="pm bench [--url URL] [--broker URL] [--devices N] [--tasks T] [OPTION ...]",
        help="load-test a gateway and its broker with simulated devices",
        description=(
            "Connect simulated devices to the broker, wait until the gateway sees them "
            "online, run one job of --tasks tasks with a live progress bar, then print "
            "tasks/s, p50/p99 task latencies, outcomes by status and answer code, and write "
            "bench.json (every task's figures) and bench.png (tasks/s and answer latency over "
            "time)."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    fleet = parser.add_argument_group("the simulated fleet")
    fleet.add_argument(
        "--broker",
        type=broker_address,
        metavar="URL",
        help="the MQTT broker the gateway uses: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] "
        "(default: mqtt://<the --url host>:1883, where pm serve embeds it)",
    )
    fleet.add_argument(
        "--broker-username", metavar="NAME", help="log the fleet's connections in as NAME"
    )
    fleet.add_argument(
        "--broker-password",
        metavar="P",
        help=f"NAME's password (default: ${BROKER_PASSWORD_ENV})",
    )
    fleet.add_argument(
        "--device-password",
        metavar="P",
        help="with the embedded broker's broker.auth: every device logs in as its id with P, "
        f"one connection each (default: ${DEVICE_PASSWORD_ENV})",
    )
    fleet.add_argument(
        "--broker-ca",
        metavar="FILE",
        help="trust the CA certificate(s) in FILE (PEM) for the broker's TLS (implies TLS)",
    )
    fleet.add_argument(
        "--devices",
        type=positive_int,
        default=DEFAULT_DEVICES,
        metavar="N",
        help="simulated devices (default: %(default)s)",
    )
    fleet_behaviour_options(fleet)
    fleet.add_argument(
        "--online-timeout",
        type=positive_float,
        default=120.0,
        metavar="S",
        help="seconds the fleet has to be online at the gateway (default: %(default)g)",
    )
    job = parser.add_argument_group("the job")
    job.add_argument(
        "--tasks",
        type=positive_int,
        metavar="T",
        help="tasks in the job; more than --devices sends several commands to each device, "
        "in order (default: one per device)",
    )
    job.add_argument(
        "--method",
        default="get",
        type=str.lower,
        choices=["get", "post", "put", "delete"],
        help="the Sanji method (default: %(default)s)",
    )
    job.add_argument(
        "--resource", default="/bench", help="the Sanji resource (default: %(default)s)"
    )
    job.add_argument("--data", metavar="JSON", help="the command's data: a JSON object or @FILE")
    add_timeout_options(parser)
    add_options(parser)
    parser.add_argument(
        "--out",
        default=".",
        metavar="DIR",
        help="where bench.json and bench.png are written (default: the current directory)",
    )
    log_level_option(parser)
    parser.set_defaults(run=run, log_level="error")
