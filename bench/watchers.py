"""Scenario 6: WebSocket watchers on a job: do all get the final status, what do they cost.

Rounds alternate a ``--tasks`` job with no watcher and the same job with ``--watchers``
WebSocket clients (``GET /jobs/{id}/ws``, opened right after the POST, 50 handshakes at a
time). Each watcher reads until its final ``{"type": "job"}`` message (then the server
closes). The dispatch rate is tasks / (POST -> ``finishAt``); the figure is the ratio with /
without, median over rounds. The watchers run in the benchmark process, which shares the
machine's two cores with the gateway, the broker and the fleet.

Usage::

    .venv/bin/python -m bench.watchers [--tasks 10000] [--watchers 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import shlex
import sys

import msgspec
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from bench._load import FINAL_STATUSES, http_client, job_body, parse_time, post_job, wait_final
from bench._processes import fleet_ids, start_fleet, start_gateway, workdir
from bench._report import Report, median

_decode = msgspec.json.Decoder().decode


async def _watch(url: str, handshakes: trio.Semaphore, finals: list[str]) -> None:
    await handshakes.acquire()  # released once connected: at most 50 handshakes at a time
    released = False
    try:
        async with open_websocket_url(url, connect_timeout=120) as connection:
            handshakes.release()
            released = True
            while True:
                message = await connection.get_message()
                # Task messages are skipped without decoding: only job messages say "final".
                if '"type":"job"' not in message:
                    continue
                job = _decode(message)
                status = job.get("job", job).get("status") if isinstance(job, dict) else None
                if status in FINAL_STATUSES:
                    finals.append(status)
                    return
    except ConnectionClosed:
        return
    finally:
        if not released:
            handshakes.release()


async def _one_job(base: str, devices: list[str], watchers: int) -> tuple[float, int]:
    finals: list[str] = []
    async with http_client(base) as client, trio.open_nursery() as nursery:
        job_id, sent = await post_job(client, job_body(devices))
        handshakes = trio.Semaphore(50)
        ws_url = base.replace("http://", "ws://") + f"/jobs/{job_id}/ws"
        for _ in range(watchers):
            nursery.start_soon(_watch, ws_url, handshakes, finals)
        job = await wait_final(client, job_id, poll=0.1)
    rate = job["totalCount"] / (parse_time(job["finishAt"]) - sent)
    return rate, sum(status == "resolved" for status in finals)


async def _measure(base: str, devices: list[str], watchers: int, rounds: int) -> dict[str, list]:
    without: list[float] = []
    with_watchers: list[float] = []
    finals: list[int] = []
    await _one_job(base, devices, 0)  # warm-up
    for round_number in range(rounds):
        order = (0, watchers) if round_number % 2 == 0 else (watchers, 0)
        for count in order:
            with trio.fail_after(600):
                rate, resolved = await _one_job(base, devices, count)
            if count:
                with_watchers.append(rate)
                finals.append(resolved)
            else:
                without.append(rate)
    return {
        "without": without,
        "with": with_watchers,
        "ratio": [w / o for w, o in zip(with_watchers, without, strict=True)],
        "final_received": finals,
    }


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    with workdir() as directory:
        # The default limit (limits.max_watchers_per_job = 100) would refuse most of them.
        gateway = start_gateway(
            directory, extra_env={"PM_LIMITS_MAX_WATCHERS_PER_JOB": str(args.watchers + 10)}
        )
        fleet = start_fleet(directory, int(gateway.info["mqtt_port"]), args.tasks, args.connections)
        try:
            figures = trio.run(
                _measure,
                str(gateway.info["url"]),
                fleet_ids(args.tasks),
                args.watchers,
                args.rounds,
            )
        finally:
            fleet.stop()
            gateway.stop()
    report = Report(
        scenario="watchers",
        title=f"Scenario 6: {args.watchers:,} WebSocket watchers on a {args.tasks:,}-task job",
        command="python -m bench.watchers " + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=["tasks/s without", "tasks/s with", "with / without", "watchers with final"],
    )
    ratio = median(figures["ratio"])
    all_final = min(figures["final_received"])
    report.rows.append(
        [
            median(figures["without"]),
            median(figures["with"]),
            ratio,
            f"{all_final}/{args.watchers} (worst round)",
        ]
    )
    report.target(
        "(6) all watchers get the final status",
        all_final,
        f"= {args.watchers}",
        all_final == args.watchers,
    )
    report.target("(6) rate with / without watchers", ratio, ">= 0.90", ratio >= 0.9)
    report.raw = figures
    report.write()
    return report


if __name__ == "__main__":
    main()
