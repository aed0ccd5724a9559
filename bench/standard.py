"""The standard benchmark set (``make bench``): every scenario at its standard sizes, then one
summary of all targets in ``bench/results/summary.md``.

Usage::

    .venv/bin/python -m bench.standard [--quick]

``--quick`` runs smaller sizes (1k tasks, 1 round) to check the harness in about a minute;
its figures are not the ones the targets are about.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from bench import api_load, broker_fanout, dispatch, latency, reconnect_storm, scale, watchers
from bench._processes import machine
from bench._report import RESULTS, Report

STANDARD: list[tuple[Callable[[list[str]], Report], list[str]]] = [
    # Issue 15: the gateway's default store (a SQLite file) with the fleet multiplexed and
    # with one connection per device is the main table; :memory: the second.
    (
        dispatch.main,
        ["--sizes", "1000", "10000", "--rounds", "3", "--brokers", "amqtt", "mosquitto"]
        + ["--stores", "file", "--connections", "100", "0"],
    ),
    (
        dispatch.main,
        ["--sizes", "1000", "10000", "--rounds", "3", "--brokers", "amqtt", "mosquitto"]
        + ["--stores", "memory", "--scenario", "dispatch-memory"],
    ),
    (latency.main, ["--jobs", "200"]),
    (latency.main, ["--jobs", "200", "--broker", "mosquitto"]),
    # Stock amqtt does not connect 10,000 devices within the fleet's 120 s: 1,000 only.
    (
        broker_fanout.main,
        ["--connections", "1000", "10000", "--stock-connections", "1000"]
        + ["--brokers", "ours", "stock"],
    ),
    # Issue 15 item 2: a burst to N per-device connections against the same over one; the
    # same fleet and requester through mosquitto show what the harness itself allows.
    (
        broker_fanout.main,
        ["--burst", "--connections", "1000", "10000", "--brokers", "ours", "mosquitto"]
        + ["--rounds", "2"],
    ),
    (watchers.main, ["--tasks", "10000", "--watchers", "1000", "--rounds", "2"]),
    # Issue 15 item 4's more common shape: 1,000 watchers spread over 100 running jobs.
    (
        watchers.main,
        ["--tasks", "10000", "--watchers", "1000", "--rounds", "2", "--jobs", "100"]
        + ["--scenario", "watchers_100jobs"],
    ),
    (api_load.main, ["--tasks", "10000"]),
    (scale.main, ["--tasks", "100000", "--small", "10000", "--devices", "10000"]),
    (reconnect_storm.main, ["--devices", "10000"]),
]

QUICK: list[tuple[Callable[[list[str]], Report], list[str]]] = [
    (
        dispatch.main,
        ["--sizes", "1000", "--rounds", "1", "--brokers", "amqtt", "mosquitto"]
        + ["--stores", "file", "memory", "--connections", "100", "0"],
    ),
    (latency.main, ["--jobs", "50"]),
    (broker_fanout.main, ["--connections", "100", "--requests", "300", "--brokers", "ours"]),
    (broker_fanout.main, ["--burst", "--connections", "300", "--brokers", "ours", "--bursts", "1"]),
    (watchers.main, ["--tasks", "1000", "--watchers", "50", "--rounds", "1"]),
    (api_load.main, ["--tasks", "1000"]),
    (scale.main, ["--tasks", "5000", "--small", "1000", "--devices", "1000"]),
    (reconnect_storm.main, ["--devices", "1000"]),
]


ORDER = [
    "dispatch",
    "dispatch-memory",
    "latency",
    "latency-mosquitto",
    "broker_fanout",
    "broker_fanout_burst",
    "watchers",
    "watchers_100jobs",
    "api_load",
    "scale",
    "reconnect_storm",
]


def write_summary(seconds: float, quick: bool, reports: list[Report]) -> None:
    """``bench/results/summary.md``: every target, then every scenario's table, from the
    JSON results on disk (so a scenario re-run alone updates the summary too)."""
    documents = []
    for name in ORDER:
        path = RESULTS / f"{name}.json"
        if path.exists():
            documents.append(json.loads(path.read_text()))
    info = machine()
    lines = [
        f"# puppetmaster benchmarks (summary written {time.strftime('%Y-%m-%d %H:%M')}"
        f"{', --quick' if quick else ''})",
        "",
        f"Machine: {info['cores']} cores {info['cpu']}, {info['memory_gib']} GiB, "
        f"Python {info['python']}, Linux {info['kernel']}. Each scenario's run time is in its "
        "JSON (`when`).",
        "",
        "## Targets",
        "",
        "| target | figure | goal | |",
        "|---|---|---|---|",
    ]
    for document in documents:
        for t in document["targets"]:
            verdict = "met" if t["met"] else "**missed**"
            lines.append(f"| {t['target']} | {t['figure']}{t['unit']} | {t['goal']} | {verdict} |")
    lines += ["", "## Scenarios", ""]
    for document in documents:
        lines.append((RESULTS / f"{document['scenario']}.md").read_text().split("\n", 1)[1])
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'summary.md'} ({seconds:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--summarize", action="store_true", help="only rewrite summary.md from the results"
    )
    parser.add_argument(
        "--from",
        dest="start",
        type=int,
        default=0,
        help="skip the first K scenarios of the set (after an interrupted run); the summary "
        "then covers only those run",
    )
    args = parser.parse_args()
    started = time.monotonic()
    if args.summarize:
        write_summary(0.0, False, [])
        return
    chosen = (QUICK if args.quick else STANDARD)[args.start :]
    reports = [run(arguments) for run, arguments in chosen]
    write_summary(time.monotonic() - started, args.quick, reports)


if __name__ == "__main__":
    main()
