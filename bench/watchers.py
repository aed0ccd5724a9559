"""Scenario 6: WebSocket watchers on a job: do all get the final status, what do they cost.

Each round runs a ``--tasks`` job with no watcher and, per ``--modes`` entry, the same job
with ``--watchers`` WebSocket clients (``GET /jobs/{id}/ws?tasks=MODE``, opened right after
the POST, 50 handshakes at a time); the order alternates between rounds. The modes say what
a watcher receives about tasks, besides the job snapshots:

- ``each``: one ``{"type": "task"}`` message per task change (the default protocol);
- ``batch``: ``{"type": "tasks"}`` messages, all the changes since the last, at most one
  per coalesce interval (what ``pm watch`` asks for);
- ``none``: job snapshots only (a progress bar).

With ``--jobs N`` each run is N jobs posted back to back, the tasks split evenly between them and
the watchers spread evenly over them (``--jobs 100``: 1,000 watchers are 10 per job, the more
common shape of many running jobs each watched by a few).

Each watcher reads until its final ``{"type": "job"}`` message (then the server closes). The
dispatch rate is tasks / (first POST -> last ``finishAt``); the figure is the ratio with / without,
median over rounds, per mode. The gateway's CPU seconds per job (POST to the last watcher's
close) say what the watchers cost it, a figure less sensitive than rates to other load on
the machine. The watchers share the machine's two cores with the gateway, the broker and
the fleet: ``--client process`` (the default) runs them all in one process of their own on
one ``epoll`` loop (:mod:`bench._watcher_fleet`), the cheapest client the benchmark has,
its CPU reported apart (``watchers``), so that CPU goes to what is measured; ``--client
lean`` as trio tasks in the benchmark process (:mod:`bench._lean_watcher`); ``--client
trio-websocket`` as every figure up to 2026-12-01 was taken (a bug ran every watcher that
way, whatever ``--client`` said). The table's last columns say what bounds the ratio: the
gateway's CPU per watcher, the watchers' clients' CPU, and the CPU bound of the ratio (all
processes' CPU per job without watchers over with them: on a machine whose cores the run
fills, as it fills 2, the ratio cannot be higher).

Usage::

    .venv/bin/python -m bench.watchers [--tasks 10000] [--watchers 1000] [--rounds 2]
        [--jobs 1]
        [--modes each,batch,none] [--client process|lean|trio-websocket]
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import sys
import time
from typing import Any

import msgspec
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from bench._lean_watcher import watch as _lean_watch
from bench._load import FINAL_STATUSES, http_client, job_body, parse_time, post_job, wait_final
from bench._processes import (
    children_of,
    cpu_seconds,
    fleet_ids,
    start_fleet,
    start_gateway,
    workdir,
)
from bench._report import Report, median
from bench._watcher_fleet import open_watcher_fleet, run_watcher_fleet

_decode = msgspec.json.Decoder().decode


MODES = ("each", "batch", "none")


async def _watch(
    url: str,
    handshakes: trio.Semaphore,
    finals: list[str],
    messages: list[int],
    client: str = "trio-websocket",
) -> None:
    """One watcher to the end: its final status into ``finals``, its message count into
    ``messages``. ``client``: ``lean`` (:mod:`bench._lean_watcher`) or ``trio-websocket``."""
    await handshakes.acquire()  # released once connected: at most 50 handshakes at a time
    released = False

    def connected() -> None:
        nonlocal released
        handshakes.release()
        released = True

    try:
        if client == "lean":
            status, received = await _lean_watch(url, connected)
            if status in FINAL_STATUSES:
                finals.append(status)
                messages.append(received)
            return
        async with open_websocket_url(url, connect_timeout=120) as connection:
            connected()
            received = 0
            while True:
                message = await connection.get_message()
                received += 1
                # Task messages are skipped without decoding: only job messages say "final",
                # and the gateway writes the tag first.
                if not message.startswith('{"type":"job"'):
                    continue
                job = _decode(message)
                status = job.get("job", job).get("status") if isinstance(job, dict) else None
                if status in FINAL_STATUSES:
                    finals.append(status)
                    messages.append(received)
                    return
    except ConnectionClosed:
        return
    finally:
        if not released:
            handshakes.release()


def _cpu_by_process(processes: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each process, and of this one (the watchers' clients)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {name: cpu_seconds(pid) for name, pid in processes.items()} | {
        "bench": own.ru_utime + own.ru_stime
    }


async def _one_job(
    base: str,
    processes: dict[str, int],
    devices: list[str],
    watchers: int,
    mode: str,
    jobs: int = 1,
    client: str = "trio-websocket",
) -> tuple[float, int, float, dict[str, float]]:
    """``jobs`` jobs at once over ``devices`` (split evenly), ``watchers`` spread evenly over
    them. Returns the dispatch rate (all tasks / first POST -> last ``finishAt``), the
    watchers that got the final "resolved" message, the mean number of messages they
    received and the CPU seconds each process spent (``processes`` by name, plus ``bench``:
    this process) and the ``wall`` seconds."""
    finals: list[str] = []
    messages: list[int] = []
    fleet = await open_watcher_fleet() if client == "process" and watchers else None
    cpu_before = _cpu_by_process(processes)
    started = time.monotonic()
    share = -(-len(devices) // jobs)
    # (Named apart from ``client``: the watchers' kind was once shadowed by the HTTP client,
    # and every watcher ran as trio-websocket whatever --client said.)
    async with http_client(base) as http, trio.open_nursery() as nursery:
        handshakes = trio.Semaphore(50)
        posted = []
        for first in range(0, len(devices), share):
            job_id, sent = await post_job(http, job_body(devices[first : first + share]))
            posted.append((job_id, sent))
        urls = [
            base.replace("http://", "ws://") + f"/jobs/{posted[n % len(posted)][0]}/ws?tasks={mode}"
            for n in range(watchers)
        ]
        if fleet is not None:
            nursery.start_soon(run_watcher_fleet, fleet, urls, finals, messages)
        else:
            for url in urls:
                nursery.start_soon(_watch, url, handshakes, finals, messages, client)
        finished = [await wait_final(http, job_id, poll=0.1) for job_id, _ in posted]
    total = sum(job["totalCount"] for job in finished)
    last = max(parse_time(job["finishAt"]) for job in finished)
    rate = total / (last - posted[0][1])
    cpu_after = _cpu_by_process(processes)
    cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
    if client == "process":
        cpu["watchers"] = fleet.cpu if fleet is not None else 0.0
    cpu["wall"] = time.monotonic() - started
    mean_messages = sum(messages) / len(messages) if messages else 0.0
    return rate, sum(status == "resolved" for status in finals), mean_messages, cpu


async def _measure(
    base: str,
    processes: dict[str, int],
    devices: list[str],
    watchers: int,
    rounds: int,
    modes: list[str],
    jobs: int,
    client: str,
) -> dict[str, Any]:
    without: list[float] = []
    without_cpu: list[dict[str, float]] = []
    by_mode: dict[str, dict[str, list[Any]]] = {
        mode: {"with": [], "ratio": [], "final_received": [], "messages": [], "cpu": []}
        for mode in modes
    }
    await _one_job(base, processes, devices, 0, "each", jobs, client)  # warm-up
    for round_number in range(rounds):
        runs = [None, *modes]
        for mode in runs if round_number % 2 == 0 else reversed(runs):
            with trio.fail_after(600):
                rate, resolved, messages, cpu = await _one_job(
                    base,
                    processes,
                    devices,
                    watchers if mode else 0,
                    mode or "each",
                    jobs,
                    client,
                )
            if mode is None:
                without.append(rate)
                without_cpu.append(cpu)
            else:
                figures = by_mode[mode]
                figures["with"].append(rate)
                figures["final_received"].append(resolved)
                figures["messages"].append(messages)
                figures["cpu"].append(cpu)
    for figures in by_mode.values():
        figures["ratio"] = [w / o for w, o in zip(figures["with"], without, strict=True)]
    return {"without": without, "without_cpu": without_cpu, "modes": by_mode}


def _cpu_note(label: str, runs: list[dict[str, float]]) -> str:
    """One line: median CPU seconds per process over ``runs``, against what 2 cores offer."""
    medians = {name: median([run[name] for run in runs]) for name in runs[0]}
    spent = sum(value for name, value in medians.items() if name != "wall")
    parts = ", ".join(f"{name} {value:.2f}" for name, value in medians.items() if name != "wall")
    cores = os.cpu_count() or 1
    return (
        f"CPU s per job, {label} (median): {parts}; together {spent:.1f} of the "
        f"{cores * medians['wall']:.1f} that {cores} cores offer in its {medians['wall']:.1f} s"
    )


def _cpu_bound(without: list[dict[str, float]], with_watchers: list[dict[str, float]]) -> float:
    """What the ratio can be at most if the job is bound by the machine's CPU (every process
    of the run sharing its cores, as here): the CPU seconds of all processes per job without
    watchers over those with them (medians), the watchers' clients included."""

    def total(runs: list[dict[str, float]]) -> float:
        return median([sum(value for name, value in run.items() if name != "wall") for run in runs])

    return total(without) / total(with_watchers)


def _jobs_text(args: argparse.Namespace) -> str:
    if args.jobs == 1:
        return f"a {args.tasks:,}-task job"
    return f"{args.jobs} jobs at once, {args.tasks:,} tasks in all"


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="jobs at once, the tasks split evenly between them, the watchers spread over them",
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="comma-separated ?tasks= modes to measure (each, batch, none)",
    )
    parser.add_argument(
        "--client",
        choices=("process", "lean", "trio-websocket"),
        default="process",
        help="the watchers' WebSocket client: process (bench/_watcher_fleet.py: all of them in "
        "one process of their own, one epoll loop, the cheapest, its CPU reported apart), "
        "lean (bench/_lean_watcher.py, trio tasks in this process) or trio-websocket (the "
        "figures of 2026-12-01 and before: a bug ran every watcher as trio-websocket)",
    )
    parser.add_argument("--scenario", default="watchers", help="result file name")
    args = parser.parse_args(argv)
    modes = [mode for mode in args.modes.split(",") if mode]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes takes a comma-separated subset of {','.join(MODES)}")
    with workdir() as directory:
        # The default limit (limits.max_watchers_per_job = 100) would refuse most of them.
        gateway = start_gateway(
            directory, extra_env={"PM_LIMITS_MAX_WATCHERS_PER_JOB": str(args.watchers + 10)}
        )
        fleet = start_fleet(directory, int(gateway.info["mqtt_port"]), args.tasks, args.connections)
        try:
            processes = {
                "gateway": gateway.pid,
                "broker": children_of(gateway.pid)[0],
                "fleet": fleet.pid,
            }
            figures = trio.run(
                _measure,
                str(gateway.info["url"]),
                processes,
                fleet_ids(args.tasks),
                args.watchers,
                args.rounds,
                modes,
                args.jobs,
                args.client,
            )
        finally:
            fleet.stop()
            gateway.stop()
    report = Report(
        scenario=args.scenario,
        title=f"Scenario 6: {args.watchers:,} WebSocket watchers on {_jobs_text(args)}",
        command="python -m bench.watchers " + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=[
            "?tasks=",
            "tasks/s without",
            "tasks/s with",
            "with / without",
            "watchers with final",
            "messages per watcher",
            "gateway CPU s without",
            "gateway CPU s with",
            "gateway CPU ms per watcher",
            "watchers' clients CPU s",
            "CPU bound of the ratio",
        ],
    )
    without = median(figures["without"])
    without_cpu = median([run["gateway"] for run in figures["without_cpu"]])
    report.notes.append(f"watchers' client: {args.client} (--client)")
    report.notes.append(_cpu_note("without watchers", figures["without_cpu"]))
    size = f"{args.watchers:,} watchers, {args.tasks:,} tasks"
    if args.jobs > 1:
        size += f" in {args.jobs} jobs"
    for mode in modes:
        by_mode = figures["modes"][mode]
        report.notes.append(_cpu_note(f"{args.watchers:,} watchers, ?tasks={mode}", by_mode["cpu"]))
        ratio = median(by_mode["ratio"])
        all_final = min(by_mode["final_received"])
        with_cpu = median([run["gateway"] for run in by_mode["cpu"]])
        clients_cpu = median([run.get("watchers", run["bench"]) for run in by_mode["cpu"]])
        report.rows.append(
            [
                mode,
                without,
                median(by_mode["with"]),
                ratio,
                f"{all_final}/{args.watchers} (worst round)",
                round(median(by_mode["messages"])),
                round(without_cpu, 1),
                round(with_cpu, 1),
                round((with_cpu - without_cpu) * 1000 / args.watchers, 2),
                round(clients_cpu, 1),
                round(_cpu_bound(figures["without_cpu"], by_mode["cpu"]), 3),
            ]
        )
        report.target(
            f"(6) all watchers get the final status, ?tasks={mode} ({size})",
            all_final,
            f"= {args.watchers}",
            all_final == args.watchers,
        )
        report.target(
            f"(6) rate with / without watchers, ?tasks={mode} ({size})",
            ratio,
            ">= 0.90",
            ratio >= 0.9,
        )
    report.raw = figures
    report.write()
    return report


if __name__ == "__main__":
    main()
