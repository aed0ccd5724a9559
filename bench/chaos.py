"""Chaos soak: jobs through a broker SIGKILLed every few seconds and a gateway SIGKILLed once.

**Settle** (default): one job of ``--devices`` x ``--entries`` tasks (20,000 = 2,000 x 10) to
simulated devices with one MQTT connection each (``pm simulate``, each answering after
``--latency`` s), while

- the broker is SIGKILLed each time it has run ``--kill-broker-every`` s: the gateway's
  embedded broker child (the gateway restarts it, after a delay that grows to 5 s), or with
  ``--broker mosquitto`` an external mosquitto that this driver starts again on the same port
  ``--broker-down`` s later;
- the gateway is SIGKILLed ``--kill-gateway-at`` s after the POST and started again on the
  same ports and the same store (its embedded broker child dies with it).

Then it checks from the outside, and exits 1 if any check fails:

- every task of the job is listed once, with one final status, and the job's counts agree
  with those statuses: each task settled exactly once in the final counts; the devices never
  fail, so every task must end ``resolved``;
- no device ever held two commands at once (the simulator's ``overlaps``: a request that
  arrived while the device was working on another one);
- duplicate deliveries are counted and reported, not failed: ``redelivered`` (a request id the
  device had received before) and ``duplicates`` (those of them it recognized, replaying its
  answer instead of doing the work again).

**Memory** (``--soak-seconds S``): jobs one after another for S seconds, sampling the resident
memory of the gateway and of the broker (the embedded child, or mosquitto) every
``--sample-every`` s. Growth is the mean of the last three samples against the mean of the
first three taken after ``--warmup`` s (goal: < 10%). The gateway keeps finished jobs in memory
up to ``tasks.max_finished_tasks`` (100,000 tasks) by design: the warm-up must outlast that
many tasks (~70 s at 1,500 tasks/s), or ``--gateway-env PM_TASKS_MAX_FINISHED_TASKS=10000``
for a short run. No kills in this mode unless asked: a restarted broker starts from nothing,
which would hide its growth.

Usage::

    .venv/bin/python -m bench.chaos                          # 20,000 tasks, embedded amqtt
    .venv/bin/python -m bench.chaos --broker mosquitto       # an external mosquitto, restarted
    .venv/bin/python -m bench.chaos --soak-seconds 600 [--broker mosquitto]
    .venv/bin/python -m bench.chaos --devices 100 --entries 10 --latency 0.3 \\
        --kill-broker-every 1.5 --kill-gateway-at 2          # a short run, like the test suite's

Results go to ``bench/results/chaos.json`` (or ``chaos-memory.json``) only with ``--save``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from bench._chaos import ChaosOutcome, ChaosSettings, run
from bench._processes import workdir
from bench._report import Report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = ChaosSettings()
    parser.add_argument("--devices", type=int, default=defaults.devices)
    parser.add_argument("--entries", type=int, default=defaults.entries, help="tasks per device")
    parser.add_argument("--broker", choices=("embedded", "mosquitto"), default=defaults.broker)
    parser.add_argument(
        "--kill-broker-every",
        type=float,
        help="seconds between broker SIGKILLs, 0 for none (default: 5, none with --soak-seconds)",
    )
    parser.add_argument(
        "--max-broker-kills", type=int, help="leave the broker alone after this many kills"
    )
    parser.add_argument("--broker-down", type=float, default=defaults.broker_down)
    parser.add_argument(
        "--kill-gateway-at",
        type=float,
        default=defaults.kill_gateway_at,
        help="seconds after the POST; negative for never",
    )
    parser.add_argument("--latency", type=float, default=defaults.latency)
    parser.add_argument("--task-timeout", type=float, default=defaults.task_timeout)
    parser.add_argument("--deadline", type=float, default=defaults.deadline)
    parser.add_argument("--soak-seconds", type=float, default=0.0)
    parser.add_argument("--warmup", type=float, default=defaults.warmup)
    parser.add_argument("--sample-every", type=float, default=defaults.sample_every)
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more of the gateway's environment, e.g. PM_TASKS_MAX_FINISHED_TASKS=10000",
    )
    parser.add_argument("--save", action="store_true", help="write bench/results/chaos*.json")
    parser.add_argument(
        "--keep", metavar="DIR", type=Path, help="run in DIR and keep its logs and store there"
    )
    args = parser.parse_args(argv)
    memory = args.soak_seconds > 0
    kill_every = args.kill_broker_every
    if kill_every is None:
        kill_every = 0.0 if memory else defaults.kill_broker_every
    settings = ChaosSettings(
        devices=args.devices,
        entries=args.entries,
        broker=args.broker,
        kill_broker_every=kill_every,
        max_broker_kills=args.max_broker_kills,
        broker_down=args.broker_down,
        kill_gateway_at=None if args.kill_gateway_at < 0 else args.kill_gateway_at,
        latency=args.latency,
        task_timeout=args.task_timeout,
        deadline=args.deadline + args.soak_seconds,
        soak_seconds=args.soak_seconds,
        warmup=args.warmup,
        sample_every=args.sample_every,
        gateway_env=dict(pair.split("=", 1) for pair in args.gateway_env),
    )
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        outcome = run(settings, args.keep)
    else:
        with workdir() as directory:
            outcome = run(settings, directory)
    report = _report(
        settings,
        outcome,
        "python -m bench.chaos " + shlex.join(sys.argv[1:] if argv is None else argv),
    )
    if args.save:
        report.write()
    else:
        print(report.markdown())
    for problem in outcome.problems:
        print(f"PROBLEM: {problem}")
    return 1 if outcome.problems else 0


def _report(settings: ChaosSettings, outcome: ChaosOutcome, command: str) -> Report:
    memory = settings.soak_seconds > 0
    broker = "embedded amqtt" if settings.broker == "embedded" else "external mosquitto"
    tasks = settings.devices * settings.entries
    report = Report(
        scenario="chaos-memory" if memory else "chaos",
        title=(
            f"Memory soak: {settings.soak_seconds:g} s of {tasks:,}-task jobs, {broker}"
            if memory
            else f"Chaos: a {tasks:,}-task job to {settings.devices:,} devices, {broker} killed "
            f"every {settings.kill_broker_every:g} s, the gateway killed once"
        ),
        command=command,
        parameters=vars(settings),
        columns=["figure", "value"],
    )
    fleet = outcome.fleet
    rows: list[list[Any]] = [
        ["jobs", outcome.jobs],
        ["tasks", outcome.tasks],
        ["task statuses", ", ".join(f"{k} {v}" for k, v in sorted(outcome.statuses.items()))],
        ["seconds in jobs", round(outcome.seconds, 1)],
        ["broker SIGKILLs", outcome.broker_kills],
        ["gateway SIGKILLs and restarts", outcome.gateway_restarts],
        ["job already final at the gateway kill", outcome.job_final_before_gateway_kill],
    ]
    rows += [[f"devices: {name}", value] for name, value in fleet.items()]
    report.rows = rows
    if not memory:
        report.target(
            "tasks settled exactly once, all resolved",
            outcome.statuses["resolved"],
            f"= {outcome.tasks}",
            not outcome.problems,
        )
        report.target(
            "requests to a busy device (overlaps)",
            fleet.get("overlaps", -1),
            "= 0",
            fleet.get("overlaps") == 0,
        )
    growth = outcome.growth(settings.warmup)
    after = [sample for sample in outcome.rss_mib if sample[0] >= settings.warmup]
    if after:
        first, last = after[0], after[-1]
        report.notes.append(
            f"RSS MiB gateway / broker: {first[1]:g} / {first[2]:g} at {first[0]:g} s, "
            f"{last[1]:g} / {last[2]:g} at {last[0]:g} s; peak gateway "
            f"{max(s[1] for s in outcome.rss_mib):g}"
        )
    if growth is not None:
        report.target(
            "gateway RSS growth after warm-up", growth[0] * 100, "< 10%", growth[0] < 0.10, "%"
        )
        report.target(
            "broker RSS growth after warm-up", growth[1] * 100, "< 10%", growth[1] < 0.10, "%"
        )
    elif memory:
        report.notes.append(
            f"too few samples after the {settings.warmup:g} s warm-up for a growth figure"
        )
    report.raw = {"rss_mib": outcome.rss_mib, "problems": outcome.problems}
    return report


if __name__ == "__main__":
    sys.exit(main())
