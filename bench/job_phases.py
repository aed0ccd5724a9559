"""Where one job's time goes, phase by phase, beside the fastest requester's (issue 15 item 3).

One gateway (``pm serve``, the default file store, the embedded broker) and one fleet
(``pm simulate --devices N``, devices answering at once); for several rounds, alternately,
each shape of the fastest requester (:mod:`bench._fast_requester`, the ceiling of
:mod:`bench.dispatch`) and one job of one command to the N devices. For each job, in ms from
the moment the benchmark sends ``POST /jobs`` (the moment :mod:`bench.dispatch` starts the
job's clock):

- ``201``: the answer to the POST read by the benchmark;
- ``created``: the job's ``createdAt`` (server stamp, ms: its tasks are made);
- ``first sent`` / ``last sent``: the first and last task's ``sent_at`` (stamped when the job
  actor learns that the device actor published the request; read from the store's SQLite file
  after the job, full precision);
- ``first done`` / ``half done``: the first and the median task's ``finishAt`` (ms);
- ``finishAt``: the job's (its last answer applied): where :mod:`bench.dispatch` stops the
  clock;
- ``final seen``: the final status read by a client polling ``GET /jobs/{id}`` every
  ``--poll`` s (default 0.05; the job in memory is read there without waiting for a commit).

And the CPU each process spent (``/proc``, 10 ms ticks) during the job and during each
requester shape's burst: the gateway, its embedded broker child, the fleet (and the
requester, which runs in this process). On a machine with 2 cores the three processes share
them: a job is bounded by the busiest process and by the sum of all.

Usage::

    .venv/bin/python -m bench.job_phases [--tasks 1000] [--rounds 5] [--connections 100]
        [--ceiling-windows 100 300] [--poll 0.05]
"""

from __future__ import annotations

import argparse
import shlex
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from bench._fast_requester import fast_round_trips
from bench._load import FINAL_STATUSES, HANG_GUARD, http_client, job_body, parse_time
from bench._processes import (
    children_of,
    cpu_seconds,
    fleet_ids,
    start_fleet,
    start_gateway,
    workdir,
)
from bench._report import Report, median
from bench.dispatch import FAST_PREFIX, IDLE_GATEWAY

PHASES = (
    "201",
    "created",
    "first sent",
    "last sent",
    "first done",
    "half done",
    "finishAt",
    "final seen",
)
PROCESSES = ("gateway", "broker", "fleet", "bench")


class Processes:
    """The CPU seconds of each process, read before and after a measured part."""

    def __init__(self, gateway: int, fleet: int) -> None:
        self.pids = {"gateway": gateway, "broker": children_of(gateway)[0], "fleet": fleet}

    def now(self) -> dict[str, float]:
        spent = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return spent | {"bench": time.process_time()}

    @staticmethod
    def ms_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: (after[name] - before[name]) * 1000 for name in before}


async def _run_job(
    client: httpx.AsyncClient, devices: list[str], poll: float
) -> tuple[dict[str, Any], dict[str, float]]:
    """One job, POST to its final status seen; returns the job and the client's stamps."""
    sent = time.time()
    response = await client.post(
        "/jobs", content=job_body(devices), headers={"content-type": "application/json"}
    )
    answered = time.time()
    response.raise_for_status()
    job_id = int(response.json()["id"])
    while True:
        job: dict[str, Any] = (await client.get(f"/jobs/{job_id}")).raise_for_status().json()
        if job["status"] in FINAL_STATUSES:
            seen = time.time()
            break
        await trio.sleep(poll)
    if job["status"] != "resolved" or job["errorCount"]:
        raise RuntimeError(f"job {job_id} ended {job['status']}, {job['errorCount']} errors")
    return job, {"sent": sent, "201": answered, "final seen": seen}


async def _phases(
    client: httpx.AsyncClient, job: dict[str, Any], stamps: dict[str, float], database: Path
) -> dict[str, float]:
    """A finished job's phases in ms from its POST (see the module docstring): its tasks'
    stamps read back through the API and from the store's file."""
    tasks = (await client.get(f"/jobs/{job['id']}", params={"collection": "true"})).json()
    finished = sorted(parse_time(task["__task"]["finishAt"]) for task in tasks["collection"])
    (await client.get("/jobs", params={"limit": 1})).raise_for_status()  # waits for a commit
    first_sent, last_sent = _sent_range(database, int(job["id"]))
    moments = {
        "201": stamps["201"],
        "created": parse_time(job["createdAt"]),
        "first sent": first_sent,
        "last sent": last_sent,
        "first done": finished[0],
        "half done": finished[len(finished) // 2],
        "finishAt": parse_time(job["finishAt"]),
        "final seen": stamps["final seen"],
    }
    return {phase: (moment - stamps["sent"]) * 1000 for phase, moment in moments.items()}


def _sent_range(database: Path, job_id: int) -> tuple[float, float]:
    """The first and last ``sent_at`` of a job's tasks, read from the store's file."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        first, last = connection.execute(
            "SELECT min(sent_at), max(sent_at) FROM tasks WHERE job_id = ?", (job_id,)
        ).fetchone()
    return float(first), float(last)


async def _measure(
    gateway_url: str,
    mqtt_port: int,
    processes: Processes,
    devices: list[str],
    args: argparse.Namespace,
    database: Path,
) -> dict[str, Any]:
    windows = [0, *(window for window in args.ceiling_windows if 0 < window < len(devices))]
    shapes = [f"{FAST_PREFIX}{window}" for window in windows]
    raw: dict[str, Any] = {"jobs": [], "requesters": []}
    async with http_client(gateway_url) as client:
        # Warm-up: device actors spawned, broker routes learned, code paths imported.
        await _run_job(client, devices, args.poll)
        await fast_round_trips(mqtt_port, devices, window=0)
        for round_number in range(args.rounds):
            kinds = ["job", *shapes]
            shift = round_number % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                with trio.fail_after(HANG_GUARD):
                    before, started = processes.now(), time.perf_counter()
                    if kind == "job":
                        job, stamps = await _run_job(client, devices, args.poll)
                    else:
                        window = int(kind.removeprefix(FAST_PREFIX))
                        rate = await fast_round_trips(mqtt_port, devices, window=window)
                    wall = time.perf_counter() - started
                    # The gateway and fleet may still be finishing what the burst left them.
                    await trio.sleep(0.2)
                    cpu = Processes.ms_between(before, processes.now())
                if kind == "job":
                    phases = await _phases(client, job, stamps, database)
                    raw["jobs"].append({"phases": phases, "cpu_ms": cpu, "wall_s": wall})
                else:
                    raw["requesters"].append(
                        {"round": round_number, "shape": kind, "rate": rate, "cpu_ms": cpu}
                    )
    return raw


def _row(
    label: str, seconds: float, tasks: int, cpu: dict[str, float], phases: list[Any]
) -> list[Any]:
    return [label, tasks / seconds, seconds * 1000, *phases, *(cpu[name] for name in PROCESSES)]


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks = devices")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=100, help="0: one per device")
    parser.add_argument("--ceiling-windows", type=int, nargs="*", default=[100, 300])
    parser.add_argument("--poll", type=float, default=0.05, help="s between GET /jobs/{id}")
    parser.add_argument("--scenario", default="job_phases", help="result file name")
    args = parser.parse_args(argv)
    devices = fleet_ids(args.tasks)
    with workdir() as directory:
        database = directory / "puppetmaster.db"
        gateway = start_gateway(
            directory, extra_env={"PM_STORE_PATH": str(database)} | IDLE_GATEWAY
        )
        try:
            fleet = start_fleet(
                directory, int(gateway.info["mqtt_port"]), args.tasks, args.connections or None
            )
            try:
                processes = Processes(gateway.pid, fleet.pid)
                raw = trio.run(
                    _measure,
                    str(gateway.info["url"]),
                    int(gateway.info["mqtt_port"]),
                    processes,
                    devices,
                    args,
                    database,
                )
            finally:
                fleet.stop()
        finally:
            gateway.stop()
    report = build_report(args, sys.argv[1:] if argv is None else argv, raw)
    report.write()
    return report


def build_report(args: argparse.Namespace, command: list[str], raw: dict[str, Any]) -> Report:
    """The table of ``raw`` (what :func:`_measure` returned): the job's phases and each
    requester shape's, medians; job / ceiling against each round's best shape."""
    report = Report(
        scenario=args.scenario,
        title=f"Where a {args.tasks:,}-task job's time goes, beside the fastest requester "
        "(medians; ms from the POST)",
        command="python -m bench.job_phases " + shlex.join(command),
        parameters=vars(args),
        columns=[
            "run",
            "tasks/s",
            "ms",
            *PHASES,
            *(f"{name} CPU ms" for name in PROCESSES),
        ],
        raw=raw,
    )
    jobs = raw["jobs"]
    job_ms = median([job["phases"]["finishAt"] for job in jobs])
    report.rows.append(
        _row(
            "job (POST -> finishAt)",
            job_ms / 1000,
            args.tasks,
            {name: median([job["cpu_ms"][name] for job in jobs]) for name in PROCESSES},
            [median([job["phases"][phase] for job in jobs]) for phase in PHASES],
        )
    )
    for shape in dict.fromkeys(run["shape"] for run in raw["requesters"]):
        runs = [run for run in raw["requesters"] if run["shape"] == shape]
        rate = median([run["rate"] for run in runs])
        report.rows.append(
            _row(
                f"requester {shape} (first write -> last answer)",
                args.tasks / rate,
                args.tasks,
                {name: median([run["cpu_ms"][name] for run in runs]) for name in PROCESSES},
                [""] * len(PHASES),
            )
        )
    best = [
        max(run["rate"] for run in raw["requesters"] if run["round"] == number)
        for number in range(args.rounds)
    ]
    ratios = [
        args.tasks / (job["phases"]["finishAt"] / 1000) / ceiling
        for job, ceiling in zip(jobs, best, strict=True)
    ]
    report.notes += [
        f"job / ceiling (each round's best requester shape), median of {args.rounds} rounds: "
        f"{median(ratios):.3f}; fleet: "
        + (f"{args.connections} connections" if args.connections else "a connection per device")
        + ", the default file store, amqtt.",
        "CPU ms: each process from the job's POST to its final status seen, plus 0.2 s, or "
        "during a requester's burst, plus 0.2 s; bench = this process (the requester, or the "
        "HTTP client and its polls).",
    ]
    return report


if __name__ == "__main__":
    main()
