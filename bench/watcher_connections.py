"""What WebSocket watchers cost the gateway, apart from any job's dispatching: per connection,
and per update written.

Connections: a finished job (10 tasks) is watched by ``--watchers`` clients (``?tasks=none``,
50 handshakes at a time), each of which gets the final job message and the server's close:
the gateway's CPU milliseconds per watcher over that (``/proc``) is the price of a handshake,
one message and a close, the part of a watcher's cost that no coalescing of its messages can
lower.

Updates (``--updates S``): a job of 200 tasks whose devices answer spread over S seconds
(``pm simulate --latency 0..S``: the job changes all along, but its dispatching costs little)
is run once unwatched and once with ``--watchers`` watchers (``?tasks=`` each of ``--modes``,
``none`` unless said); the gateway's extra CPU, less the connections' (measured as above in
the same run), over the messages the watchers received is the price of one message written
to one watcher, in microseconds (in ``batch`` a message holds every task change since the
last; in ``each`` one).

``--rounds`` repetitions, each figure printed. The watchers use the benchmark's lean client
(:mod:`bench._lean_watcher`) unless ``--client trio-websocket``.

Usage::

    .venv/bin/python -m bench.watcher_connections [--watchers 1000] [--rounds 3]
        [--updates 10] [--modes none,batch,each] [--client lean|trio-websocket]
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
SLOW_DEVICES = 200


async def _watched(url: str, watchers: int, client: str) -> tuple[int, int]:
    """``watchers`` watchers of ``url`` to their end: how many got the final message, and
    the messages they received in all."""
    finals: list[str] = []
    messages: list[int] = []
    handshakes = trio.Semaphore(50)
    async with trio.open_nursery() as nursery:
        for _ in range(watchers):
            nursery.start_soon(_watch, url, handshakes, finals, messages, client)
    return len(finals), sum(messages)


async def _connection_ms(url: str, pid: int, watchers: int, client: str) -> float:
    before = cpu_seconds(pid)
    finals, _ = await _watched(url, watchers, client)
    if finals != watchers:
        raise RuntimeError(f"{finals} of {watchers} watchers got the final message")
    return (cpu_seconds(pid) - before) * 1000 / watchers


async def _rounds(
    url: str,
    pid: int,
    devices: list[str],
    watchers: int,
    rounds: int,
    updates: float,
    client: str,
    modes: list[str],
) -> dict[str, list[float]]:
    ws = url.replace("http://", "ws://")
    figures: dict[str, list[float]] = {"ms_per_watcher": []}
    for mode in modes:
        figures[f"us_per_update_{mode}"] = []
        figures[f"updates_{mode}"] = []
    async with http_client(url) as client_http:
        finished, _ = await post_job(client_http, job_body(devices[:DEVICES]))
        await wait_final(client_http, finished)
        for _ in range(rounds):
            with trio.fail_after(300):
                connection = await _connection_ms(
                    f"{ws}/jobs/{finished}/ws?tasks=none", pid, watchers, client
                )
            figures["ms_per_watcher"].append(connection)
            if not updates:
                continue
            for mode in modes:
                with trio.fail_after(300):
                    before = cpu_seconds(pid)
                    job_id, _ = await post_job(client_http, job_body(devices))
                    await wait_final(client_http, job_id, poll=0.5)
                    unwatched = cpu_seconds(pid) - before
                    before = cpu_seconds(pid)
                    job_id, _ = await post_job(client_http, job_body(devices))
                    finals, messages = await _watched(
                        f"{ws}/jobs/{job_id}/ws?tasks={mode}", watchers, client
                    )
                    watched = cpu_seconds(pid) - before
                if finals != watchers:
                    raise RuntimeError(f"{finals} of {watchers} watchers got the final message")
                # What the updates cost: the extra CPU less the connections' (first and final
                # message included), over the messages beyond those two.
                extra = watched - unwatched - connection * watchers / 1000
                figures[f"us_per_update_{mode}"].append(
                    extra * 1e6 / max(1, messages - 2 * watchers)
                )
                figures[f"updates_{mode}"].append(messages / watchers)
    return figures


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--updates",
        type=float,
        default=0.0,
        help="also the cost per update: a job whose answers are spread over this many seconds",
    )
    parser.add_argument(
        "--modes",
        default="none",
        help="comma-separated ?tasks= modes whose cost per update is measured (none, batch, each)",
    )
    parser.add_argument("--client", choices=("lean", "trio-websocket"), default="lean")
    parser.add_argument("--scenario", default="watcher_connections", help="result file name")
    args = parser.parse_args(argv)
    modes = [mode for mode in args.modes.split(",") if mode]
    if not modes or set(modes) - {"none", "batch", "each"}:
        parser.error("--modes takes a comma-separated subset of none,batch,each")
    devices = SLOW_DEVICES if args.updates else DEVICES
    with workdir() as directory:
        gateway = start_gateway(
            directory, extra_env={"PM_LIMITS_MAX_WATCHERS_PER_JOB": str(args.watchers + 10)}
        )
        options = ("--latency", f"0..{args.updates:g}") if args.updates else ()
        fleet = start_fleet(directory, int(gateway.info["mqtt_port"]), devices, 1, options=options)
        try:
            figures = trio.run(
                _rounds,
                str(gateway.info["url"]),
                gateway.pid,
                fleet_ids(devices),
                args.watchers,
                args.rounds,
                args.updates,
                args.client,
                modes,
            )
        finally:
            fleet.stop()
            gateway.stop()
    report = Report(
        scenario=args.scenario,
        title="Gateway CPU per WebSocket watcher: per connection (handshake, final message, "
        "close) and per update written",
        command="python -m bench.watcher_connections "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=["watchers", "measure", "each round", "median"],
    )
    labels = [("ms_per_watcher", "gateway CPU ms per watcher connection")]
    for mode in modes:
        labels.append(
            (f"us_per_update_{mode}", f"gateway CPU µs per update written to a watcher, {mode}")
        )
        labels.append((f"updates_{mode}", f"updates per watcher, {mode}"))
    for key, label in labels:
        if figures.get(key):
            report.rows.append(
                [
                    args.watchers,
                    label,
                    ", ".join(f"{figure:.2f}" for figure in figures[key]),
                    median(figures[key]),
                ]
            )
    report.notes.append(f"watchers' client: {args.client} (--client)")
    report.raw = figures
    report.write()
    return report


if __name__ == "__main__":
    main()
