"""Open dashboards on a running job, with and without WebSocket compression: what they cost.

A dashboard's job page (pm/ui/static/job.js) holds the job's WebSocket with
``?tasks=none&interval=1`` (a job snapshot a second at most) and reads one page of 50 tasks
(``GET /jobs/{id}/tasks?limit=50``) when it opens and when the job ends (``--task-page-every
S`` also reloads it every S seconds, what an earlier version did). Each browser asks for
permessage-deflate on that WebSocket.
This benchmark opens ``--dashboards`` such clients on a ``--tasks`` job right after its POST
and compares the job's dispatch rate (tasks / (POST -> ``finishAt``)) with the same job
watched by none, median over ``--rounds``, alternating the order.

It does so against two gateways in turn: ``http.websocket_compression = false`` (the
default: the clients' deflate offer is refused and frames go plain) and ``true`` (accepted:
the gateway deflates every message it sends each of them). The clients are the same in both
(a minimal wsproto client that always offers permessage-deflate, as browsers do; trio-
websocket cannot offer extensions), so the difference is the compression alone. The gateway's
CPU seconds per job say what the watchers cost it, a figure less sensitive to other load
on the machine than rates.

Usage::

    .venv/bin/python -m bench.dashboards [--tasks 10000] [--dashboards 100] [--rounds 2]
        [--tasks-mode none] [--interval 1] [--task-page-every 0] [--compression false,true]

``--tasks-mode each`` makes every task change a message to every dashboard: the heaviest
stream, where compression costs most.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

import httpx
import msgspec
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from bench._load import FINAL_STATUSES, http_client, job_body, parse_time, post_job
from bench._processes import (
    children_of,
    cpu_seconds,
    fleet_ids,
    start_fleet,
    start_gateway,
    workdir,
)
from bench._report import Report, median

_decode = msgspec.json.Decoder().decode
TASK_PAGE_SIZE = 50
# Seconds between two polls for the job's end (bench._load.wait_final's GET /jobs/{id} lists
# all 10,000 task ids: polled every 0.1 s, it costs the gateway CPU in proportion to how long
# the job runs, which hides the dashboards' own cost on a loaded machine).
POLL = 0.25


async def _wait_final(client: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
    """The job once final, polled as the newest job of ``GET /jobs?limit=1`` (no task ids)."""
    with trio.fail_after(900):
        while True:
            response = await client.get("/jobs", params={"limit": 1})
            response.raise_for_status()
            (job,) = response.json()
            assert job["id"] == job_id, "another job was created meanwhile"
            if job["status"] in FINAL_STATUSES:
                return job
            await trio.sleep(POLL)


class Dashboard:
    """One job page's traffic: the WebSocket and its periodic task page."""

    def __init__(self) -> None:
        self.compressed: bool | None = None
        self.messages = 0
        self.final: str | None = None


async def _watch(host: str, port: int, target: str, dashboard: Dashboard) -> None:
    """A minimal WebSocket client offering permessage-deflate, reading until the final job
    message (wsproto inflates what was deflated)."""
    stream = await trio.open_tcp_stream(host, port)
    connection = WSConnection(ConnectionType.CLIENT)
    async with stream:
        await stream.send_all(
            connection.send(
                Request(host=f"{host}:{port}", target=target, extensions=[PerMessageDeflate()])
            )
        )
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            connection.receive_data(data)
            for event in connection.events():
                if isinstance(event, AcceptConnection):
                    dashboard.compressed = bool(event.extensions)
                elif isinstance(event, RejectConnection):
                    raise RuntimeError(f"handshake refused: {event.status_code}")
                elif isinstance(event, Ping):
                    await stream.send_all(connection.send(event.response()))
                elif isinstance(event, TextMessage):
                    dashboard.messages += 1
                    if not event.message_finished or not event.data.startswith('{"type":"job"'):
                        continue
                    status = _decode(event.data)["job"]["status"]
                    if status in FINAL_STATUSES:
                        dashboard.final = status
                        return
                elif isinstance(event, CloseConnection):
                    return


async def _task_page(client: httpx.AsyncClient, job_id: int) -> None:
    response = await client.get(f"/jobs/{job_id}/tasks", params={"limit": TASK_PAGE_SIZE})
    response.raise_for_status()


async def _reload_tasks(client: httpx.AsyncClient, job_id: int, every: float) -> None:
    while True:
        await trio.sleep(every)
        await _task_page(client, job_id)


async def _dashboard(
    base: str,
    client: httpx.AsyncClient,
    job_id: int,
    query: str,
    every: float,
    dashboard: Dashboard,
) -> None:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    async with trio.open_nursery() as nursery:
        await _task_page(client, job_id)
        if every > 0:
            nursery.start_soon(_reload_tasks, client, job_id, every)
        await _watch(host, int(port), f"/jobs/{job_id}/ws?{query}", dashboard)
        nursery.cancel_scope.cancel()
        await _task_page(client, job_id)


async def _one_job(
    base: str, gateway_pid: int, devices: list[str], dashboards: int, query: str, every: float
) -> dict[str, Any]:
    opened = [Dashboard() for _ in range(dashboards)]
    cpu_before = cpu_seconds(gateway_pid)
    async with http_client(base) as client, trio.open_nursery() as nursery:
        job_id, sent = await post_job(client, job_body(devices))
        for dashboard in opened:
            nursery.start_soon(_dashboard, base, client, job_id, query, every, dashboard)
        job = await _wait_final(client, job_id)
    return {
        "rate": job["totalCount"] / (parse_time(job["finishAt"]) - sent),
        "gateway_cpu": cpu_seconds(gateway_pid) - cpu_before,
        "final": sum(dashboard.final == "resolved" for dashboard in opened),
        "compressed": sum(bool(dashboard.compressed) for dashboard in opened),
        "messages": median([dashboard.messages for dashboard in opened]) if opened else 0,
    }


async def _measure(
    base: str,
    gateway_pid: int,
    devices: list[str],
    dashboards: int,
    rounds: int,
    query: str,
    every: float,
) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    await _one_job(base, gateway_pid, devices, 0, query, every)  # warm-up
    for round_number in range(rounds):
        order = [0, dashboards] if round_number % 2 == 0 else [dashboards, 0]
        for count in order:
            with trio.fail_after(600):
                run = await _one_job(base, gateway_pid, devices, count, query, every)
            runs["with" if count else "without"].append(run)
    return runs


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--dashboards", type=int, default=100)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tasks-mode", default="none", choices=["each", "batch", "none"])
    parser.add_argument("--interval", type=float, default=1.0, help="?interval= of the ws")
    parser.add_argument(
        "--task-page-every", type=float, default=0.0, help="also reload the task page (s)"
    )
    parser.add_argument("--compression", default="false,true", help="settings to measure")
    parser.add_argument("--scenario", default="dashboards", help="result file name")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {}
    query = f"tasks={args.tasks_mode}&interval={args.interval:g}"
    for compression in [value == "true" for value in args.compression.split(",")]:
        with workdir() as directory:
            gateway = start_gateway(
                directory,
                extra_env={
                    "PM_HTTP_WEBSOCKET_COMPRESSION": str(compression).lower(),
                    "PM_LIMITS_MAX_WATCHERS_PER_JOB": str(args.dashboards + 10),
                },
            )
            fleet = start_fleet(
                directory, int(gateway.info["mqtt_port"]), args.tasks, args.connections
            )
            try:
                assert children_of(gateway.pid), "the embedded broker did not start"
                started = time.monotonic()
                figures[f"compression={str(compression).lower()}"] = trio.run(
                    _measure,
                    str(gateway.info["url"]),
                    gateway.pid,
                    fleet_ids(args.tasks),
                    args.dashboards,
                    args.rounds,
                    query,
                    args.task_page_every,
                )
                print(f"compression={compression}: {time.monotonic() - started:.0f} s")
            finally:
                fleet.stop()
                gateway.stop()
    every = args.task_page_every
    reloads = f"every {every:g} s" if every else "at open and end"
    report = Report(
        scenario=args.scenario,
        title=f"{args.dashboards} open dashboards on a {args.tasks:,}-task job (?{query}, task "
        f"page {reloads})",
        command="python -m bench.dashboards " + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=[
            "http.websocket_compression",
            "tasks/s without",
            "tasks/s with",
            "with / without",
            "gateway CPU s without",
            "gateway CPU s with",
            "gateway CPU ms per dashboard",
            "compressed / final",
            "messages per dashboard",
        ],
    )
    for setting, runs in figures.items():
        without, with_ = runs["without"], runs["with"]
        ratio = median([w["rate"] / o["rate"] for w, o in zip(with_, without, strict=True)])
        cpu_without = median([run["gateway_cpu"] for run in without])
        cpu_with = median([run["gateway_cpu"] for run in with_])
        report.rows.append(
            [
                setting.split("=")[1],
                median([run["rate"] for run in without]),
                median([run["rate"] for run in with_]),
                ratio,
                round(cpu_without, 2),
                round(cpu_with, 2),
                round(1000 * (cpu_with - cpu_without) / max(1, args.dashboards), 1),
                f"{min(run['compressed'] for run in with_)}/"
                f"{min(run['final'] for run in with_)} of {args.dashboards}",
                round(median([run["messages"] for run in with_])),
            ]
        )
        report.target(
            f"{args.dashboards} dashboards cost <= 10% of the dispatch rate ({setting})",
            ratio,
            ">= 0.90",
            ratio >= 0.9,
        )
    report.raw = figures
    report.write()
    return report


if __name__ == "__main__":
    main()
