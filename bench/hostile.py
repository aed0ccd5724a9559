"""Slow and hostile clients: what each costs dispatch, and what the gateway does to them.

One gateway (``pm serve``, embedded amqtt broker, in-memory store) and one fleet
(``pm simulate --devices N``, answering at once), as in ``bench.dispatch``. Each round runs a
job of ``--tasks`` tasks clean (no hostile client), then with each hostile load in turn (the
order alternates between rounds):

- ``watchers``: ``--watchers`` WebSocket clients on the job's ``/jobs/{id}/ws?tasks=MODE``
  (opened right after the POST, 50 handshakes at a time) that complete the handshake and
  then never read, with a 4 KiB receive buffer: the kernel's buffers fill and the gateway's
  sends to them stall. Reported: how long after the job ended the gateway had let go of all
  of them (``pm_websocket_watchers`` back to 0, polled) and how many it cut off for not
  reading (``pm_http_send_timeouts_total``).
- ``loris``: ``--loris`` slow-loris HTTP clients, connected before the POST, each sending a
  request line and headers one byte every ``--loris-interval`` seconds and never finishing;
  each reconnects at once when the gateway closes it; they go on after the job until the
  gateway closed each once. Reported: seconds each connection was left open, how it ended.
- ``oversized``: ``--frame-clients`` WebSocket clients on the job, each sending one message
  of ``--frame-bytes`` (over ``http.max_websocket_message_bytes``) and waiting for the
  close, then again on a new connection. Reported: how their connections ended (close
  codes) and after how long.
- ``garbage``: ``--frame-clients`` WebSocket clients on the job sending garbage (not JSON,
  10,000-deep JSON, binary, 8 KiB of text) every ``--garbage-interval`` seconds while
  reading what they are sent; they reconnect when closed.

Figures per load: the job's rate (tasks / (POST -> ``finishAt``)) and its ratio to the
median clean rate; the gateway's peak RSS during the phase (VmRSS sampled every 0.1 s) and
its RSS after (the hostile clients gone, ``--settle`` seconds later); the gateway's CPU
seconds over the phase (the job and the hostile clients' aftermath). Kernel socket buffers
(up to ~4 MiB per stalled connection here) are not in the gateway's RSS. The hostile clients
run in the benchmark process, which shares the machine's cores with the gateway, the broker
and the fleet.

Usage::

    .venv/bin/python -m bench.hostile [--tasks 10000] [--watchers 1000] [--loris 500]
        [--frame-clients 50] [--rounds 1] [--loads watchers,loris,oversized,garbage]
        [--send-timeout S]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

import httpx
import trio

from bench._hostile_clients import (
    Fate,
    garbage_sender,
    open_never_reading_watcher,
    oversized_sender,
    slow_loris,
)
from bench._load import http_client, job_body, parse_time, post_job, wait_final
from bench._processes import cpu_seconds, fleet_ids, memory_kib, start_fleet, start_gateway, workdir
from bench._report import Report, median

LOADS = ("watchers", "loris", "oversized", "garbage")
# Longest wait for the gateway to let go of never-reading watchers after the job ended,
# beyond its send timeout.
RELEASE_MARGIN = 30.0
# The gateway's default http.send_timeout (pm/config.py), when --send-timeout is not given.
DEFAULT_SEND_TIMEOUT = 30.0


async def _metric(client: httpx.AsyncClient, name: str) -> float:
    """One unlabelled sample of ``GET /metrics``."""
    response = await client.get("/metrics")
    response.raise_for_status()
    for line in response.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise RuntimeError(f"/metrics has no {name}")


async def _sample_rss(pid: int, peak: list[int]) -> None:
    while True:
        peak[0] = max(peak[0], memory_kib(pid))
        await trio.sleep(0.1)


async def _open_stalled(
    base: str, path: str, count: int, stalled: list[trio.SocketStream], fate: Fate
) -> None:
    handshakes = trio.Semaphore(50)

    async def open_one() -> None:
        async with handshakes:
            fate.connections += 1
            try:
                stalled.append(await open_never_reading_watcher(base, path))
            except (OSError, RuntimeError) as refused:
                fate.endings[f"refused: {refused}"[:60]] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(open_one)


async def _release_of_stalled(
    client: httpx.AsyncClient, job_ended: float, cap: float, timeouts_before: float, fate: Fate
) -> None:
    """Waits (up to ``cap`` s) until the gateway holds no watcher; records when, and why."""
    with trio.move_on_after(cap):
        while await _metric(client, "pm_websocket_watchers") > 0:  # noqa: ASYNC110 - another process
            await trio.sleep(0.25)
    remaining = await _metric(client, "pm_websocket_watchers")
    timeouts = await _metric(client, "pm_http_send_timeouts_total") - timeouts_before
    if remaining:
        fate.endings[f"still held {cap:.0f} s after the job ended"] = int(remaining)
    else:
        fate.closed_after.append(time.monotonic() - job_ended)
    fate.endings["cut off for not reading (send timeout)"] = int(timeouts)


async def _phase(
    client: httpx.AsyncClient, base: str, pid: int, devices: list[str], load: str | None, args: Any
) -> dict[str, Any]:
    """One job with ``load`` (None: clean); returns its figures."""
    fate = Fate()
    peak = [memory_kib(pid)]
    cpu_before = cpu_seconds(pid)
    timeouts_before = await _metric(client, "pm_http_send_timeouts_total")
    stalled: list[trio.SocketStream] = []
    async with trio.open_nursery() as sampler:
        sampler.start_soon(_sample_rss, pid, peak)
        async with trio.open_nursery() as attackers:
            if load == "loris":
                for _ in range(args.loris):
                    attackers.start_soon(slow_loris, base, args.loris_interval, fate)
                await trio.sleep(args.loris_interval)  # all connected and trickling
            job_id, sent = await post_job(client, job_body(devices))
            ws_path = f"/jobs/{job_id}/ws"
            ws_url = base.replace("http://", "ws://", 1) + ws_path
            if load == "watchers":
                path = f"{ws_path}?tasks={args.watch_mode}"
                attackers.start_soon(_open_stalled, base, path, args.watchers, stalled, fate)
            elif load == "oversized":
                for _ in range(args.frame_clients):
                    attackers.start_soon(oversized_sender, ws_url, args.frame_bytes, fate)
            elif load == "garbage":
                for _ in range(args.frame_clients):
                    attackers.start_soon(garbage_sender, ws_url, args.garbage_interval, fate)
            job = await wait_final(client, job_id, poll=0.1)
            job_ended = time.monotonic()
            if load == "loris":
                # Until the gateway closed each at least once, to see what it does to them.
                with trio.move_on_after(args.loris_interval * 2 + RELEASE_MARGIN):
                    while len(fate.closed_after) < args.loris:  # noqa: ASYNC110 - a tally
                        await trio.sleep(0.1)
            if load != "watchers":
                attackers.cancel_scope.cancel()
        if load == "watchers":
            cap = (args.send_timeout or DEFAULT_SEND_TIMEOUT) + RELEASE_MARGIN
            await _release_of_stalled(client, job_ended, cap, timeouts_before, fate)
            for stream in stalled:
                await trio.aclose_forcefully(stream)
        await trio.sleep(args.settle)
        sampler.cancel_scope.cancel()
    if job["status"] != "resolved" or job["errorCount"]:
        raise RuntimeError(f"job ended {job['status']}, {job['errorCount']} errors")
    return {
        "load": load or "clean",
        "rate": job["totalCount"] / (parse_time(job["finishAt"]) - sent),
        "rss_peak_mib": peak[0] / 1024,
        "rss_after_mib": memory_kib(pid) / 1024,
        "gateway_cpu_s": cpu_seconds(pid) - cpu_before,
        "fate": fate.summary() if load else "",
    }


async def _measure(base: str, pid: int, devices: list[str], args: Any) -> list[dict[str, Any]]:
    phases: list[dict[str, Any]] = []
    async with http_client(base) as client:
        await _phase(client, base, pid, devices, None, args)  # warm-up
        for round_number in range(args.rounds):
            loads = args.loads if round_number % 2 == 0 else list(reversed(args.loads))
            for load in [None, *loads]:
                with trio.fail_after(900):
                    phases.append(await _phase(client, base, pid, devices, load, args))
    return phases


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=100, help="the fleet's MQTT ones")
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument(
        "--watch-mode",
        default="batch",
        choices=("each", "batch", "none"),
        help="batch: the most bytes per watcher, so the buffers of never-reading ones fill",
    )
    parser.add_argument("--loris", type=int, default=500)
    parser.add_argument("--loris-interval", type=float, default=2.0, help="s between bytes")
    parser.add_argument("--frame-clients", type=int, default=25, help="per frame load")
    parser.add_argument("--frame-bytes", type=int, default=1024 * 1024)
    parser.add_argument("--garbage-interval", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--loads", default=",".join(LOADS), help="comma-separated subset")
    parser.add_argument("--settle", type=float, default=2.0, help="s before RSS after")
    parser.add_argument(
        "--send-timeout", type=float, default=None, help="the gateway's http.send_timeout"
    )
    parser.add_argument("--scenario", default="hostile", help="result file name")
    args = parser.parse_args(argv)
    args.loads = [load for load in args.loads.split(",") if load]
    if not args.loads or set(args.loads) - set(LOADS):
        parser.error(f"--loads takes a comma-separated subset of {','.join(LOADS)}")
    return args


def main(argv: list[str] | None = None) -> Report:
    args = _arguments(argv)
    env = {
        # The default limit (limits.max_watchers_per_job = 100) would refuse most of them.
        "PM_LIMITS_MAX_WATCHERS_PER_JOB": str(args.watchers + args.frame_clients + 10),
    }
    if args.send_timeout is not None:
        env["PM_HTTP_SEND_TIMEOUT"] = str(args.send_timeout)
    with workdir() as directory:
        gateway = start_gateway(directory, extra_env=env)
        fleet = start_fleet(directory, int(gateway.info["mqtt_port"]), args.tasks, args.connections)
        try:
            phases = trio.run(
                _measure, str(gateway.info["url"]), gateway.pid, fleet_ids(args.tasks), args
            )
        finally:
            fleet.stop()
            gateway.stop()
    return _report(args, argv, phases)


def _report(
    args: argparse.Namespace, argv: list[str] | None, phases: list[dict[str, Any]]
) -> Report:
    report = Report(
        scenario=args.scenario,
        title=f"Slow and hostile clients during a {args.tasks:,}-task job",
        command="python -m bench.hostile " + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=[
            "load",
            "tasks/s",
            "vs clean",
            "gateway RSS peak MiB",
            "RSS after MiB",
            "gateway CPU s",
            "what the gateway did to the hostile clients",
        ],
    )
    clean_rate = median([phase["rate"] for phase in phases if phase["load"] == "clean"])
    describe = {
        "clean": "no hostile client",
        "watchers": f"{args.watchers} never-reading watchers (?tasks={args.watch_mode})",
        "loris": f"{args.loris} slow-loris clients, 1 byte / {args.loris_interval:g} s",
        "oversized": f"{args.frame_clients} WebSocket clients sending {args.frame_bytes:,}-byte "
        "messages",
        "garbage": f"{args.frame_clients} WebSocket clients sending garbage every "
        f"{args.garbage_interval:g} s",
    }
    for load in ["clean", *args.loads]:
        runs = [phase for phase in phases if phase["load"] == load]
        rate = median([run["rate"] for run in runs])
        report.rows.append(
            [
                describe[load],
                rate,
                round(rate / clean_rate, 3),
                round(max(run["rss_peak_mib"] for run in runs), 1),
                round(max(run["rss_after_mib"] for run in runs), 1),
                round(median([run["gateway_cpu_s"] for run in runs]), 2),
                runs[-1]["fate"] or "",
            ]
        )
        if load != "clean":
            report.target(
                f"rate with {describe[load]} / clean",
                rate / clean_rate,
                ">= 0.90",
                rate / clean_rate >= 0.9,
            )
    report.notes.append(
        f"{args.rounds} round(s), loads alternated; vs clean = median rate / median clean rate; "
        "the hostile clients column is the last round's"
    )
    report.raw = {"phases": phases}
    report.write()
    return report


if __name__ == "__main__":
    main()
