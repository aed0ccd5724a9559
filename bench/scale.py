"""Scenario 5: a 100k-task job: the gateway's peak RSS, and its per-task cost vs a 10k job.

One gateway and one fleet of ``--devices`` devices (10k by default, over 100 connections);
the big job sends ``--tasks / --devices`` commands to every device (each device gets them in
sequence, one in flight), the small one ``--small / --devices``. Rounds alternate small and
big; per-task cost is the gateway process's CPU seconds per task (``/proc``), and wall-clock
seconds per task beside it. Peak RSS is ``VmHWM`` of the gateway process (the broker is a
separate child, reported apart).

Usage::

    .venv/bin/python -m bench.scale [--tasks 100000] [--small 10000] [--devices 10000]
        [--rounds 1]
"""

from __future__ import annotations

import argparse
import shlex
import sys

import trio

from bench._load import http_client, run_job
from bench._processes import (
    Service,
    children_of,
    cpu_seconds,
    fleet_ids,
    memory_kib,
    start_fleet,
    start_gateway,
    workdir,
)
from bench._report import Report, median


async def _measure(
    gateway: Service, devices: list[str], sizes: dict[str, int], rounds: int
) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {}
    async with http_client(str(gateway.info["url"])) as client:
        await run_job(client, devices)  # warm-up: device actors exist in both measurements
        for round_number in range(rounds):
            order = list(sizes) if round_number % 2 == 0 else list(reversed(sizes))
            for name in order:
                entries = max(1, sizes[name] // len(devices))
                before = cpu_seconds(gateway.pid)
                result = await run_job(client, devices, entries, poll=0.2)
                if result.status != "resolved" or result.errors:
                    raise RuntimeError(f"{name} job ended {result.status}, {result.errors} errors")
                cpu = cpu_seconds(gateway.pid) - before
                figures.setdefault(f"{name}_cpu_us_per_task", []).append(cpu / result.tasks * 1e6)
                figures.setdefault(f"{name}_wall_us_per_task", []).append(
                    result.seconds / result.tasks * 1e6
                )
                figures.setdefault(f"{name}_tasks_per_second", []).append(result.tasks_per_second)
    return figures


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = {"small": args.small, "big": args.tasks}
    with workdir() as directory:
        gateway = start_gateway(directory)
        fleet = start_fleet(
            directory, int(gateway.info["mqtt_port"]), args.devices, args.connections
        )
        try:
            figures = trio.run(_measure, gateway, fleet_ids(args.devices), sizes, args.rounds)
            peak_mib = memory_kib(gateway.pid, "VmHWM") / 1024
            broker_mib = sum(memory_kib(pid, "VmHWM") for pid in children_of(gateway.pid)) / 1024
        finally:
            fleet.stop()
            gateway.stop()
    report = Report(
        scenario="scale",
        title=f"Scenario 5: {args.tasks:,}-task job vs {args.small:,} ({args.devices:,} devices)",
        command="python -m bench.scale " + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=["job", "tasks/s", "gateway CPU us/task", "wall us/task"],
    )
    for name in sizes:
        report.rows.append(
            [
                f"{sizes[name]:,} tasks",
                median(figures[f"{name}_tasks_per_second"]),
                median(figures[f"{name}_cpu_us_per_task"]),
                median(figures[f"{name}_wall_us_per_task"]),
            ]
        )
    cpu_ratio = median(figures["big_cpu_us_per_task"]) / median(figures["small_cpu_us_per_task"])
    wall_ratio = median(figures["big_wall_us_per_task"]) / median(figures["small_wall_us_per_task"])
    report.rows.append(["peak RSS gateway / broker child (MiB)", peak_mib, broker_mib, ""])
    report.target("(5) gateway peak RSS", peak_mib, "<= 500 MB", peak_mib <= 500, " MiB")
    report.target("(5) CPU per task big / small", cpu_ratio, "<= 1.5", cpu_ratio <= 1.5)
    report.target("(5) wall per task big / small", wall_ratio, "<= 1.5", wall_ratio <= 1.5)
    report.raw = figures
    report.write()
    return report


if __name__ == "__main__":
    main()
