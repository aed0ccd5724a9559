"""What one WebSocket watcher connection costs the gateway, apart from any job's dispatching.

A finished job (10 tasks) is watched by ``--watchers`` clients (``?tasks=none``, 50
handshakes at a time), each of which gets the final job message and the server's close: the
gateway's CPU milliseconds per watcher over that (``/proc``) is the price of a handshake, one
message and a close, the part of a watcher's cost that no coalescing of its messages can
lower. ``--rounds`` repetitions, each figure printed.

Usage::

    .venv/bin/python -m bench.watcher_connections [--watchers 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shlex
import sys

import trio

from bench._load import http_client, job_body, post_job, wait_final
from bench._processes import cpu_seconds, fleet_ids, start_fleet, start_gateway, workdir
from bench._report import Report, median
from bench.watchers import _watch

DEVICES = 10


async def _rounds(url: str, pid: int, watchers: int, rounds: int) -> list[float]:
    async with http_client(url) as client:
        job_id, _ = await post_job(client, job_body(fleet_ids(DEVICES)))
        await wait_final(client, job_id)
    ws_url = url.replace("http://", "ws://") + f"/jobs/{job_id}/ws?tasks=none"
    per_watcher = []
    for _ in range(rounds):
        finals: list[str] = []
        messages: list[int] = []
        handshakes = trio.Semaphore(50)
        before = cpu_seconds(pid)
        with trio.fail_after(300):
            async with trio.open_nursery() as nursery:
                for _ in range(watchers):
                    nursery.start_soon(_watch, ws_url, handshakes, finals, messages)
        if len(finals) != watchers:
            raise RuntimeError(f"{len(finals)} of {watchers} watchers got the final message")
        per_watcher.append((cpu_seconds(pid) - before) * 1000 / watchers)
    return per_watcher


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with workdir() as directory:
        gateway = start_gateway(
            directory, extra_env={"PM_LIMITS_MAX_WATCHERS_PER_JOB": str(args.watchers + 10)}
        )
        fleet = start_fleet(directory, int(gateway.info["mqtt_port"]), DEVICES, 1)
        try:
            figures = trio.run(
                _rounds, str(gateway.info["url"]), gateway.pid, args.watchers, args.rounds
            )
        finally:
            fleet.stop()
            gateway.stop()
    report = Report(
        scenario="watcher_connections",
        title="Gateway CPU per WebSocket watcher connection (handshake, final message, close)",
        command="python -m bench.watcher_connections "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=["watchers", "gateway CPU ms per watcher, each round", "median"],
    )
    report.rows.append(
        [args.watchers, ", ".join(f"{figure:.2f}" for figure in figures), median(figures)]
    )
    report.raw = {"ms_per_watcher": figures}
    report.write()
    return report


if __name__ == "__main__":
    main()
