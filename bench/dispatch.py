"""Scenarios 1-3: the raw MQTT ceiling, and one job of N tasks end to end, as a ratio.

For each broker and each fleet size N: one gateway process (``pm serve``, in-memory store
unless ``--store-file`` or ``--store-url`` says otherwise) and one fleet process (``pm simulate
--devices N``) are started; then, for several rounds,
alternating which goes first:

1. **raw**: the benchmark's own client (the gateway's MQTT client library, paho on trio)
   sends one Sanji request to each of the N device topics at once through the *same broker*
   and waits for the N answers; no gateway involved (it is idle, subscribed elsewhere);
2. **job**: ``POST /jobs`` with one command to the N devices; the time runs from the POST to
   the job's ``finishAt``.

The ratio job/raw is taken per round; the median over rounds is reported. Brokers:
``amqtt`` (embedded, the default), ``mosquitto`` (embedded engine ``broker.engine =
"mosquitto"``), ``external-mosquitto`` (a mosquitto we start; ``broker.embedded = false``).

Usage::

    .venv/bin/python -m bench.dispatch [--sizes 1000 10000] [--rounds 3]
        [--brokers amqtt mosquitto] [--connections 100]
        [--store-file | --store-url postgresql://user@host/db]

``--store-url``: the gateway stores in that PostgreSQL database (``store.url``), which must
be empty or a previous run's: the jobs of every run stay in it.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import trio

from bench._load import http_client, raw_round_trips, run_job
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


async def _measure(gateway: Service, devices: list[str], rounds: int) -> dict[str, list[float]]:
    port = int(gateway.info["mqtt_port"])
    raw: list[float] = []
    job: list[float] = []
    cpu_per_task: list[float] = []
    async with http_client(str(gateway.info["url"])) as client:
        # Warm-up: device actors spawned, broker routes learned, code paths imported.
        await run_job(client, devices)
        await raw_round_trips(port, devices, window=len(devices))
        for round_number in range(rounds):
            order = ("raw", "job") if round_number % 2 == 0 else ("job", "raw")
            for kind in order:
                if kind == "raw":
                    raw.append(await raw_round_trips(port, devices, window=len(devices)))
                else:
                    before = cpu_seconds(gateway.pid)
                    result = await run_job(client, devices)
                    cpu_per_task.append((cpu_seconds(gateway.pid) - before) / result.tasks)
                    if result.status != "resolved" or result.errors:
                        raise RuntimeError(f"job ended {result.status}, {result.errors} errors")
                    job.append(result.tasks_per_second)
    return {
        "raw": raw,
        "job": job,
        "ratio": [j / r for j, r in zip(job, raw, strict=True)],
        "gateway_cpu_ms_per_task": [c * 1000 for c in cpu_per_task],
    }


def run_size(
    broker: str, size: int, rounds: int, connections: int | None, store: dict[str, str]
) -> dict[str, list[float]]:
    with workdir() as directory:
        services: list[Service] = []
        if store.get("PM_STORE_PATH") == "file":
            store = {"PM_STORE_PATH": str(directory / "puppetmaster.db")}
        try:
            if broker == "external-mosquitto":
                external = start_broker("mosquitto", directory)
                services.append(external)
                gateway = start_gateway(
                    directory, external_port=int(external.info["port"]), extra_env=store
                )
            else:
                gateway = start_gateway(directory, engine=broker, extra_env=store)
            services.append(gateway)
            port = int(gateway.info["mqtt_port"])
            services.append(start_fleet(directory, port, size, connections))
            return trio.run(_measure, gateway, fleet_ids(size), rounds)
        finally:
            for service in reversed(services):
                service.stop()


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--brokers", nargs="+", choices=BROKERS, default=["amqtt"])
    parser.add_argument(
        "--connections",
        type=int,
        default=100,
        help="MQTT connections the fleet shares (0: one per device)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--store-file", action="store_true", help="a SQLite file (default: :memory:)"
    )
    where.add_argument("--store-url", default="", help="a PostgreSQL database (store.url)")
    parser.add_argument("--scenario", default="dispatch", help="result file name")
    args = parser.parse_args(argv)
    connections = args.connections or None
    store_name, store = ("memory", {})
    if args.store_file:
        store_name, store = ("sqlite-file", {"PM_STORE_PATH": "file"})
    elif args.store_url:
        store_name, store = ("postgresql", {"PM_STORE_URL": args.store_url})
    report = Report(
        scenario=args.scenario,
        title="Scenarios 1-3: raw MQTT ceiling vs one job of N tasks (medians)",
        command="python -m bench.dispatch " + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=[
            "broker",
            "store",
            "N tasks = N devices",
            "(1) raw rt/s",
            "(2) job tasks/s",
            "job / raw",
            "gateway CPU ms/task",
        ],
    )
    plot_series: dict[str, list[float]] = {}
    for broker in args.brokers:
        for size in args.sizes:
            figures = run_size(broker, size, args.rounds, connections, store)
            report.raw[f"{broker}/{store_name}/{size}"] = figures
            row = [
                broker,
                store_name,
                size,
                median(figures["raw"]),
                median(figures["job"]),
                median(figures["ratio"]),
                median(figures["gateway_cpu_ms_per_task"]),
            ]
            report.rows.append(row)
            raw, job, ratio = row[3], row[4], row[5]
            plot_series.setdefault(f"{broker} raw", []).append(raw)
            plot_series.setdefault(f"{broker} job", []).append(job)
            if broker == "amqtt":
                report.target(f"(2)/(1) amqtt N={size}", ratio, ">= 0.90", ratio >= 0.9)
            elif size >= 10000:
                report.target(f"(3) {broker} N={size}", job, ">= 5000 tasks/s", job >= 5000)
    report.notes.append(
        f"{args.rounds} rounds, raw and job alternated; fleet over "
        f"{connections or 'one per device'} MQTT connections in one `pm simulate` process."
    )
    report.write(
        plot={
            "x": args.sizes,
            "series": plot_series,
            "xlabel": "tasks (= devices) per job",
            "ylabel": "tasks/s (round trips/s for raw)",
        }
    )
    return report


if __name__ == "__main__":
    main()
