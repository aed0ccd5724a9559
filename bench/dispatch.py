"""Scenarios 1-3: one job of N tasks end to end, against the ceilings of its broker and fleet.

For each broker, store, fleet shape and fleet size N: one gateway process (``pm serve``) and
one fleet process (``pm simulate --devices N``, devices answering at once) are started; then,
for several rounds, rotating which goes first:

1. **pm.mqtt requester** (column "(1)"): the gateway's own MQTT client library (paho on trio,
   QoS 1) sends one Sanji request to each of the N device topics at once through the *same
   broker and fleet* and waits for the N answers; no gateway involved (it is idle,
   subscribed elsewhere). The figure the benchmark compared against before issue 15;
2. **fastest requester** (column "(1c)", :mod:`bench._fast_requester`): the same round trips
   from a minimal MQTT client that does strictly less per round trip than the gateway can
   (requests encoded before the clock starts and written 64 KiB at a time, answers found by
   their id digits, QoS 1 both ways like the gateway), in several shapes each round: the
   whole burst at once, and at most W requests unanswered for each W of
   ``--ceiling-windows`` (default 100 and 300); (1c) is the best shape of the round.
   Through amqtt the broker is the bound, and how many requests it holds at once changes
   what each costs it, so no one shape is the fastest every round;
3. **plain threaded paho** (``--paho-threaded``, :mod:`bench._paho_requester`):
   paho with its network thread, the issue's own yardstick;
4. **job**: ``POST /jobs`` with one command to the N devices; the time runs from the POST to
   the job's ``finishAt``.

The **ceiling** of a round is the fastest requester of that round (whichever it was); job /
ceiling is taken per round and the median over rounds reported. A job faster than its
ceiling means the ceiling is wrong: the report says so in its notes.

Stores (``--stores``): ``file`` (a SQLite file, the gateway's default ``store.path``; the
main row), ``memory`` (``:memory:``), or a ``postgresql://`` URL (``store.url``; the database
must be empty or a previous run's: the jobs of every run stay in it). Fleet shapes
(``--connections``): ``100`` multiplexes the N devices over 100 MQTT connections, ``0`` gives
each device its own connection, like a real fleet. Brokers: ``amqtt`` (embedded, the
default), ``mosquitto`` (embedded engine ``broker.engine = "mosquitto"``),
``external-mosquitto`` (a mosquitto we start; ``broker.embedded = false``).

Usage::

    .venv/bin/python -m bench.dispatch [--sizes 1000 10000] [--rounds 3]
        [--brokers amqtt mosquitto] [--stores file memory] [--connections 100 0]
        [--ceiling-windows 100 300] [--paho-threaded]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass

import httpx
import trio

from bench._fast_requester import fast_round_trips
from bench._load import (
    FINAL_STATUSES,
    HANG_GUARD,
    JobRun,
    http_client,
    job_body,
    parse_time,
    post_job,
    raw_round_trips,
)
from bench._paho_requester import paho_threaded_round_trips
from bench._processes import (
    Service,
    cpu_seconds,
    fleet_ids,
    start_broker,
    start_fleet,
    start_gateway,
    workdir,
)
from bench._report import Report, median

BROKERS = ("amqtt", "mosquitto", "external-mosquitto")
# Seconds between two polls of the running job. Its time ends at its own finishAt, so polling
# less often does not lengthen it. The poll is GET /jobs?limit=1 (the newest job, without task
# ids): GET /jobs/{id} of a 10k-task job encodes and sends its 10,000 task ids, and every 0.05 s
# (bench._load.run_job) that was 28% of the gateway's py-spy samples in a 22 s job (amqtt, one
# connection per device, file store).
POLL = 0.25
# A job with no answer for this many seconds is stalled: its row fails with what the gateway
# knows (tasks still sent, devices offline) instead of waiting for the tasks' timeout.
STALL = 60.0


class JobStalled(RuntimeError):
    """A job stopped progressing; the message says how far it got."""


async def _run_job(client: httpx.AsyncClient, devices: list[str]) -> JobRun:
    """One job of one command to every device, POST to its ``finishAt``; raises
    :exc:`JobStalled` when no task finishes for :data:`STALL` seconds."""
    job_id, sent = await post_job(client, job_body(devices))
    finished, progressed = -1, trio.current_time()
    while True:
        response = await client.get("/jobs", params={"limit": 1})  # the newest: ours, no ids
        response.raise_for_status()
        (job,) = response.json()
        if job["id"] != job_id:
            raise RuntimeError(f"job {job['id']} was created during job {job_id}")
        if job["status"] in FINAL_STATUSES:
            seconds = max(parse_time(job["finishAt"]) - sent, 1e-3)
            return JobRun(job_id, job["totalCount"], seconds, job["status"], job["errorCount"])
        if job["finishCount"] != finished:
            finished, progressed = job["finishCount"], trio.current_time()
        elif trio.current_time() - progressed > STALL:
            fleet = (await client.get("/fleet")).json()
            raise JobStalled(
                f"job {job_id}: {finished} of {job['totalCount']} tasks finished, none for "
                f"{STALL:g} s; {job['sentCount']} sent, {job['pendingCount']} pending, "
                f"{fleet['devicesOffline']} devices offline"
            )
        await trio.sleep(POLL)


@dataclass(frozen=True)
class Setup:
    """One row: where the job runs and what answers it."""

    broker: str
    store: str  # "file", "memory" or a postgresql:// URL
    connections: int  # fleet connections; 0 = one per device
    size: int

    @property
    def store_name(self) -> str:
        return "postgresql" if self.store.startswith("postgresql") else self.store

    @property
    def fleet_name(self) -> str:
        return "1 per device" if self.connections == 0 else str(self.connections)


# The fastest requester's shapes: "fast-w0" writes the whole burst at once, "fast-w100" keeps at
# most 100 requests unanswered, and so on (bench/README.md, "The ceilings").
FAST_PREFIX = "fast-w"
DEFAULT_WINDOWS = (0, 100, 300)


async def _requester_rate(kind: str, port: int, devices: list[str]) -> float:
    with trio.fail_after(HANG_GUARD):
        if kind == "raw":
            return await raw_round_trips(port, devices, window=len(devices))
        if kind.startswith(FAST_PREFIX):
            window = int(kind.removeprefix(FAST_PREFIX))
            return await fast_round_trips(port, devices, window=window)
        if kind == "paho-threaded":
            return await trio.to_thread.run_sync(
                lambda: paho_threaded_round_trips(port, devices, timeout=HANG_GUARD)
            )
    raise AssertionError(kind)


async def _measure(
    gateway: Service, devices: list[str], rounds: int, ceilings: list[str]
) -> dict[str, list[float]]:
    port = int(gateway.info["mqtt_port"])
    # A window of N requests or more is the whole burst at once: the same shape as window 0.
    ceilings = [
        kind
        for kind in ceilings
        if not kind.startswith(FAST_PREFIX) or int(kind.removeprefix(FAST_PREFIX)) < len(devices)
    ]
    kinds = ["raw", *ceilings, "job"]
    figures: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu_per_task: list[float] = []
    async with http_client(str(gateway.info["url"])) as client:
        # Warm-up: device actors spawned, broker routes learned, code paths imported.
        await _run_job(client, devices)
        await raw_round_trips(port, devices, window=len(devices))
        for round_number in range(rounds):
            shift = round_number % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                if kind != "job":
                    # The requester runs in this process: its CPU (all threads) is its own.
                    before = time.process_time()
                    figures[kind].append(await _requester_rate(kind, port, devices))
                    spent = time.process_time() - before
                    figures.setdefault(f"{kind}_cpu_ms_per_rt", []).append(
                        spent * 1000 / len(devices)
                    )
                    continue
                before = cpu_seconds(gateway.pid)
                result = await _run_job(client, devices)
                cpu_per_task.append((cpu_seconds(gateway.pid) - before) / result.tasks)
                if result.status != "resolved" or result.errors:
                    raise RuntimeError(f"job ended {result.status}, {result.errors} errors")
                figures["job"].append(result.tasks_per_second)
    figures["gateway_cpu_ms_per_task"] = [c * 1000 for c in cpu_per_task]
    figures = best_fast_shape(figures, [kind for kind in ceilings if kind.startswith(FAST_PREFIX)])
    others = [kind for kind in ceilings if not kind.startswith(FAST_PREFIX)]
    return with_ceilings(figures, ["raw", "fast", *others])


def best_fast_shape(figures: dict[str, list[float]], shapes: list[str]) -> dict[str, list[float]]:
    """``figures`` plus "fast": each round's best rate among the fastest requester's
    ``shapes``, with "fast_cpu_ms_per_rt" that shape's CPU in that round."""
    best = [
        max(shapes, key=lambda shape: figures[shape][round_number])
        for round_number in range(len(figures["job"]))
    ]
    return {
        **figures,
        "fast": [figures[shape][n] for n, shape in enumerate(best)],
        "fast_cpu_ms_per_rt": [
            figures[f"{shape}_cpu_ms_per_rt"][n] for n, shape in enumerate(best)
        ],
        "fast_window": [float(shape.removeprefix(FAST_PREFIX)) for shape in best],
    }


def with_ceilings(figures: dict[str, list[float]], requesters: list[str]) -> dict[str, list[float]]:
    """``figures`` (rates per round of each requester and of the job) plus each round's
    ceiling (its fastest requester), job / pm.mqtt and job / ceiling per round."""
    rounds = zip(*(figures[kind] for kind in requesters), strict=True)
    ceiling = [max(rates) for rates in rounds]
    return {
        **figures,
        "ceiling": ceiling,
        "ratio": [j / r for j, r in zip(figures["job"], figures["raw"], strict=True)],
        "ratio_ceiling": [j / c for j, c in zip(figures["job"], ceiling, strict=True)],
    }


# While a requester's burst of 10,000 goes through the broker (10-60 s through amqtt), the idle
# gateway's answer-path probe waits behind it; with its default 5 s timeout the gateway took it
# for a lost subscription, re-subscribed and reconnected (seen in its log), disturbing the next
# job. During a job its own answers prove the path and extend the wait, so this changes nothing
# in what the job rows measure.
IDLE_GATEWAY = {"PM_MQTT_ANSWER_PROBE_TIMEOUT": "300"}


def run_setup(setup: Setup, rounds: int, ceilings: list[str]) -> dict[str, list[float]]:
    with workdir() as directory:
        environment = {
            "file": {"PM_STORE_PATH": str(directory / "puppetmaster.db")},
            "memory": {},  # start_gateway's own default
        }.get(setup.store, {"PM_STORE_URL": setup.store}) | IDLE_GATEWAY
        services: list[Service] = []
        try:
            if setup.broker == "external-mosquitto":
                external = start_broker("mosquitto", directory)
                services.append(external)
                gateway = start_gateway(
                    directory, external_port=int(external.info["port"]), extra_env=environment
                )
            else:
                gateway = start_gateway(directory, engine=setup.broker, extra_env=environment)
            services.append(gateway)
            port = int(gateway.info["mqtt_port"])
            services.append(start_fleet(directory, port, setup.size, setup.connections or None))
            return trio.run(_measure, gateway, fleet_ids(setup.size), rounds, ceilings)
        finally:
            for service in reversed(services):
                service.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--brokers", nargs="+", choices=BROKERS, default=["amqtt"])
    parser.add_argument(
        "--stores",
        nargs="+",
        default=["file"],
        help="file (SQLite, the gateway's default), memory, or a postgresql:// URL",
    )
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[100],
        help="MQTT connections the fleet shares (0: one per device)",
    )
    parser.add_argument(
        "--ceiling-windows",
        type=int,
        nargs="+",
        default=list(DEFAULT_WINDOWS),
        help="shapes of the fastest requester, each measured every round: at most this many "
        "requests unanswered (0, the whole burst at once, is always measured; windows of N or "
        "more are the same shape); the best of them each round is (1c)",
    )
    parser.add_argument(
        "--paho-threaded",
        action="store_true",
        help="also measure a plain threaded paho requester (a third candidate ceiling)",
    )
    parser.add_argument("--store-file", action="store_true", help="same as --stores file")
    parser.add_argument("--store-url", default="", help="same as --stores URL")
    parser.add_argument("--scenario", default="dispatch", help="result file name")
    return parser


def main(argv: list[str] | None = None) -> Report:
    args = _parser().parse_args(argv)
    if args.store_file or args.store_url:
        args.stores = ["file"] if args.store_file else [args.store_url]
    for store in args.stores:
        if store not in ("file", "memory") and not store.startswith("postgresql://"):
            raise SystemExit(f"--stores: {store!r} is not file, memory or a postgresql:// URL")
    paho = args.paho_threaded
    windows = list(dict.fromkeys([0, *args.ceiling_windows]))  # the whole burst always
    ceilings = [f"{FAST_PREFIX}{window}" for window in windows]
    ceilings += ["paho-threaded"] if paho else []
    report = Report(
        scenario=args.scenario,
        title="Scenarios 1-3: one job of N tasks against the MQTT ceilings (medians)",
        command="python -m bench.dispatch " + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=[
            "broker",
            "store",
            "fleet connections",
            "N tasks = N devices",
            "(1) pm.mqtt rt/s",
            "(1c) fastest requester rt/s",
            *(["plain threaded paho rt/s"] if paho else []),
            "(2) job tasks/s",
            "job / (1)",
            "job / ceiling",
            "gateway CPU ms/task",
            "(1c) requester CPU ms/rt",
        ],
    )
    plot_series: dict[str, list[float]] = {}
    beaten: list[str] = []
    for broker in args.brokers:
        for store in args.stores:
            for connections in args.connections:
                for size in args.sizes:
                    setup = Setup(broker, store, connections, size)
                    try:
                        figures = run_setup(setup, args.rounds, ceilings)
                    except Exception as error:  # noqa: BLE001 - reported; the other rows go on
                        add_failed_row(report, setup, paho, error)
                        continue
                    add_row(report, setup, figures, paho, plot_series, beaten)
    report.notes.append(
        f"{args.rounds} rounds, the requesters and the job in rotating order; the ceiling of a "
        "round is its fastest requester, job / ceiling the median of the rounds' ratios. The "
        "fleet is one `pm simulate` process."
    )
    report.notes += beaten or ["No job was faster than its round's ceiling."]
    complete = all(isinstance(row[-1], float) for row in report.rows)  # no failed row
    report.write(
        plot={
            "x": args.sizes,
            "series": plot_series,
            "xlabel": "tasks (= devices) per job",
            "ylabel": "tasks/s (round trips/s for the requesters)",
        }
        if len(args.sizes) > 1 and complete
        else None
    )
    return report


def add_row(
    report: Report,
    setup: Setup,
    figures: dict[str, list[float]],
    paho: bool,
    plot_series: dict[str, list[float]],
    beaten: list[str],
) -> None:
    where = f"{setup.broker}/{setup.store_name}/{setup.fleet_name}/{setup.size}"
    report.raw[where] = figures
    job, ceiling_ratio = median(figures["job"]), median(figures["ratio_ceiling"])
    report.rows.append(
        [
            setup.broker,
            setup.store_name,
            setup.fleet_name,
            setup.size,
            median(figures["raw"]),
            median(figures["fast"]),
            *([median(figures["paho-threaded"])] if paho else []),
            job,
            median(figures["ratio"]),
            ceiling_ratio,
            median(figures["gateway_cpu_ms_per_task"]),
            median(figures["fast_cpu_ms_per_rt"]),
        ]
    )
    shapes = sorted(
        (kind for kind in figures if kind.startswith(FAST_PREFIX) and "_cpu" not in kind),
        key=lambda kind: int(kind.removeprefix(FAST_PREFIX)),
    )
    if len(shapes) > 1:
        report.notes.append(
            f"{where}: (1c) by window (0: all at once), median rt/s: "
            + ", ".join(
                f"{kind.removeprefix(FAST_PREFIX)}: {median(figures[kind]):,.0f}" for kind in shapes
            )
            + "; the best each round: "
            + ", ".join(f"{window:g}" for window in figures["fast_window"])
            + "."
        )
    label = f"{setup.broker} {setup.store_name} {setup.fleet_name}"
    plot_series.setdefault(f"{label} ceiling", []).append(median(figures["ceiling"]))
    plot_series.setdefault(f"{label} job", []).append(job)
    beaten += [
        f"**{where}, round {n + 1}: the job ({j:,.0f} tasks/s) beat the ceiling ({c:,.0f} rt/s): "
        "that ceiling is wrong.**"
        for n, (j, c) in enumerate(zip(figures["job"], figures["ceiling"], strict=True))
        if j > c
    ]
    name = f"{setup.broker} {setup.store_name}, fleet {setup.fleet_name}, N={setup.size}"
    if setup.broker == "amqtt":
        report.target(f"(2)/ceiling {name}", ceiling_ratio, ">= 0.90", ceiling_ratio >= 0.9)
    elif setup.size >= 10000:
        report.target(f"(3) {name}", job, ">= 8000 tasks/s", job >= 8000)


def add_failed_row(report: Report, setup: Setup, paho: bool, error: Exception) -> None:
    """A row that could not be measured: said in the table and the notes, its target missed."""
    where = f"{setup.broker}/{setup.store_name}/{setup.fleet_name}/{setup.size}"
    blanks = 8 if paho else 7
    report.rows.append(
        [setup.broker, setup.store_name, setup.fleet_name, setup.size] + ["failed"] * blanks
    )
    report.notes.append(f"**{where} failed: {type(error).__name__}: {str(error)[:300]}**")
    report.raw[where] = {"error": str(error)}
    name = f"{setup.broker} {setup.store_name}, fleet {setup.fleet_name}, N={setup.size}"
    if setup.broker == "amqtt":
        report.target(f"(2)/ceiling {name}", float("nan"), ">= 0.90", False)
    elif setup.size >= 10000:
        report.target(f"(3) {name}", float("nan"), ">= 8000 tasks/s", False)


if __name__ == "__main__":
    main()
