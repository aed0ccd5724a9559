"""Scenario 7: latency of ``GET /jobs/{id}`` while a job of ``--tasks`` tasks dispatches.

While the job runs, one client issues ``GET /jobs/{id}`` back to back on a kept-alive
connection and records each request's latency; p50/p99 are over the requests made between
the POST and the job's end. The same GETs on the idle gateway (after the job) are the
baseline.

Usage::

    .venv/bin/python -m bench.api_load [--tasks 10000]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import trio

from bench._load import FINAL_STATUSES, http_client, job_body, percentile, post_job
from bench._processes import fleet_ids, start_fleet, start_gateway, workdir
from bench._report import Report


async def _gets(client, job_id: int, until_final: bool, count: int = 200) -> list[float]:  # noqa: ANN001
    latencies: list[float] = []
    while True:
        started = time.perf_counter()
        job = (await client.get(f"/jobs/{job_id}")).json()
        latencies.append((time.perf_counter() - started) * 1000)
        if until_final and job["status"] in FINAL_STATUSES:
            return latencies
        if not until_final and len(latencies) >= count:
            return latencies


async def _measure(base: str, devices: list[str]) -> tuple[list[float], list[float]]:
    async with http_client(base) as client:
        job_id, _ = await post_job(client, job_body(devices))  # warm-up job
        await _gets(client, job_id, until_final=True)
        job_id, _ = await post_job(client, job_body(devices))
        with trio.fail_after(600):
            loaded = await _gets(client, job_id, until_final=True)
        idle = await _gets(client, job_id, until_final=False)
    return loaded, idle


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=100)
    args = parser.parse_args(argv)
    with workdir() as directory:
        gateway = start_gateway(directory)
        fleet = start_fleet(directory, int(gateway.info["mqtt_port"]), args.tasks, args.connections)
        try:
            loaded, idle = trio.run(_measure, str(gateway.info["url"]), fleet_ids(args.tasks))
        finally:
            fleet.stop()
            gateway.stop()
    report = Report(
        scenario="api_load",
        title=f"Scenario 7: GET /jobs/{{id}} latency during a {args.tasks:,}-task job",
        command="python -m bench.api_load " + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=["gateway", "GETs", "p50 ms", "p99 ms", "max ms"],
    )
    for name, values in (("dispatching", loaded), ("idle", idle)):
        report.rows.append(
            [name, len(values), percentile(values, 0.5), percentile(values, 0.99), max(values)]
        )
    report.notes.append("No goal is set for (7); it is reported.")
    report.raw = {"loaded_ms": loaded, "idle_ms": idle}
    report.write()
    return report


if __name__ == "__main__":
    main()
