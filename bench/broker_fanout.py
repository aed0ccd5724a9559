"""The embedded broker alone: round trips/s with 1 vs 1,000 vs 10,000 device connections, and
its memory per idle device connection; our amqtt subclass beside stock amqtt 0.12.1.

For each broker and each connection count C, a bare broker process (``python -m
pm.broker.amqtt``, ``--stock-amqtt`` for amqtt's own Broker) and a fleet of C devices, one
MQTT connection and one subscription each (``pm simulate --devices C``), are started; the
benchmark's client then makes ``--requests`` sequential QoS 1 Sanji round trips, cycling
over the C devices. The ratio is rt/s with C connections over rt/s with 1, where the
1-connection figure is the mean of a run before and a run after the others (the machine
drifts). Memory per idle connection is (broker RSS with the fleet connected - RSS before) / C.

``--burst`` (issue 15's shape: a job is a burst, a fleet one connection per device): for each
N in ``--connections``, N requests at once to N devices with one connection each, and the
same burst to N devices multiplexed over one connection; the ratio of the two rates, broker
and fleet CPU per round trip, and how many of amqtt's PUBACK waits expired (the broker child
reports them at its stop).

Usage::

    .venv/bin/python -m bench.broker_fanout [--connections 1000 10000] [--requests 2000]
        [--brokers ours stock mosquitto] [--burst]
"""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
import sys
import time

import trio

from bench._load import raw_round_trips
from bench._processes import (
    cpu_seconds,
    fleet_ids,
    memory_kib,
    start_broker,
    start_fleet,
    workdir,
)
from bench._report import Report


def _one(
    broker: str,
    connections: int,
    requests: int,
    *,
    window: int = 1,
    multiplexed: bool = False,
) -> dict[str, float]:
    """One point; a fleet that cannot connect in time is recorded (rt/s 0), not fatal:
    stock amqtt does not connect 10,000 devices within the fleet's 120 s.

    Args:
      connections: devices, one MQTT connection each (``multiplexed``: all over one).
      requests: round trips, cycling over the devices.
      window: requests outstanding at once (1: sequential; ``requests``: one burst).
    """
    try:
        return _measure_one(broker, connections, requests, window, multiplexed)
    except RuntimeError as error:
        print(f"{broker} with {connections} connections failed: {str(error)[:200]}")
        return {
            "rt_per_second": 0.0,
            "kib_per_connection": float("nan"),
            "connect_seconds": -1,
            "broker_cpu_ms_per_rt": float("nan"),
            "fleet_cpu_ms_per_rt": float("nan"),
            "puback_timeouts": float("nan"),
        }


def _measure_one(
    broker: str, connections: int, requests: int, window: int, multiplexed: bool
) -> dict[str, float]:
    with workdir() as directory:
        engine = "mosquitto" if broker == "mosquitto" else "amqtt"
        server = start_broker(engine, directory, stock=broker == "stock")
        try:
            time.sleep(0.2)
            before = memory_kib(server.pid)
            started = time.monotonic()
            fleet = start_fleet(
                directory, int(server.info["port"]), connections, 1 if multiplexed else None
            )
            connect_seconds = time.monotonic() - started
            try:
                time.sleep(0.5)
                after = memory_kib(server.pid)
                devices = fleet_ids(connections)
                sequence = list(itertools.islice(itertools.cycle(devices), requests))
                # CPU per round trip of the broker and of the fleet process, apart: on a small
                # machine the fleet's own per-connection upkeep competes with the broker for
                # the cores, and this tells the two apart.
                broker_cpu, fleet_cpu = cpu_seconds(server.pid), cpu_seconds(fleet.pid)
                rate = trio.run(
                    lambda: raw_round_trips(int(server.info["port"]), sequence, window=window)
                )
                broker_cpu = cpu_seconds(server.pid) - broker_cpu
                fleet_cpu = cpu_seconds(fleet.pid) - fleet_cpu
            finally:
                fleet.stop()
        finally:
            server.stop()
        # Our broker child counts amqtt's expired PUBACK waits and reports them at its stop.
        timeouts = sum(
            int(found)
            for found in re.findall(r"(\d+) PUBACK waits exceeded", server.log.read_text())
        )
    return {
        "rt_per_second": rate,
        "puback_timeouts": timeouts,
        "kib_per_connection": (after - before) / connections,
        "connect_seconds": connect_seconds,
        "broker_cpu_ms_per_rt": broker_cpu * 1000 / requests,
        "fleet_cpu_ms_per_rt": fleet_cpu * 1000 / requests,
    }


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--stock-connections",
        type=int,
        nargs="+",
        help="connection counts for stock amqtt (default: --connections)",
    )
    parser.add_argument(
        "--brokers", nargs="+", choices=("ours", "stock", "mosquitto"), default=["ours", "stock"]
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help="N requests at once to N devices (N = each --connections), one connection per "
        "device against the same burst to N devices over one multiplexed connection",
    )
    args = parser.parse_args(argv)
    if args.burst:
        return _burst(args, sys.argv[1:] if argv is None else argv)
    report = Report(
        scenario="broker_fanout",
        title="Broker alone: sequential QoS 1 round trips/s vs device connections",
        command="python -m bench.broker_fanout "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=[
            "broker",
            "device connections",
            "rt/s",
            "vs 1 connection",
            "KiB per idle connection",
            "fleet connect s",
            "broker CPU ms/rt",
            "fleet CPU ms/rt",
        ],
    )
    for broker in args.brokers:
        first = _one(broker, 1, args.requests)
        counts = args.connections
        if broker == "stock" and args.stock_connections:
            counts = args.stock_connections
        others = {count: _one(broker, count, args.requests) for count in counts}
        last = _one(broker, 1, args.requests)
        baseline = (first["rt_per_second"] + last["rt_per_second"]) / 2
        report.rows.append(
            [
                broker,
                1,
                baseline,
                1.0,
                "",
                "",
                (first["broker_cpu_ms_per_rt"] + last["broker_cpu_ms_per_rt"]) / 2,
                (first["fleet_cpu_ms_per_rt"] + last["fleet_cpu_ms_per_rt"]) / 2,
            ]
        )
        report.raw[broker] = {"1_before": first, "1_after": last, **others}
        for count, figures in others.items():
            ratio = figures["rt_per_second"] / baseline
            report.rows.append(
                [
                    broker,
                    count,
                    figures["rt_per_second"],
                    ratio,
                    figures["kib_per_connection"],
                    figures["connect_seconds"],
                    figures["broker_cpu_ms_per_rt"],
                    figures["fleet_cpu_ms_per_rt"],
                ]
            )
            if broker == "ours":
                report.target(f"broker rt/s {count:,} conns / 1", ratio, ">= 0.80", ratio >= 0.8)
    report.write()
    return report


def _burst(args: argparse.Namespace, argv: list[str]) -> Report:
    """Burst mode: per count N and broker, a burst of N requests to N devices with one
    connection each, and the same burst to N devices multiplexed over one connection."""
    report = Report(
        scenario="broker_fanout_burst",
        title="Broker alone: a burst of N QoS 1 round trips to N devices, per-device "
        "connections vs one multiplexed connection",
        command="python -m bench.broker_fanout " + shlex.join(argv),
        parameters=vars(args),
        columns=[
            "broker",
            "N devices, N requests",
            "rt/s, N connections",
            "rt/s, 1 connection",
            "N conns / 1 conn",
            "broker CPU ms/rt, N conns",
            "fleet CPU ms/rt, N conns",
            "PUBACK waits expired, N conns / 1 conn",
        ],
    )
    for broker in args.brokers:
        counts = args.connections
        if broker == "stock" and args.stock_connections:
            counts = args.stock_connections
        for count in counts:
            spread = _one(broker, count, count, window=count)
            multiplexed = _one(broker, count, count, window=count, multiplexed=True)
            report.raw[f"{broker}_{count}"] = {"spread": spread, "multiplexed": multiplexed}
            ratio = spread["rt_per_second"] / multiplexed["rt_per_second"]
            report.rows.append(
                [
                    broker,
                    count,
                    spread["rt_per_second"],
                    multiplexed["rt_per_second"],
                    ratio,
                    spread["broker_cpu_ms_per_rt"],
                    spread["fleet_cpu_ms_per_rt"],
                    f"{spread['puback_timeouts']:g} / {multiplexed['puback_timeouts']:g}",
                ]
            )
            if broker == "ours":
                report.target(
                    f"burst rt/s {count:,} conns / 1 conn", ratio, ">= 0.80", ratio >= 0.8
                )
                report.target(
                    f"PUBACK waits expired in a {count:,} burst",
                    spread["puback_timeouts"] + multiplexed["puback_timeouts"],
                    "= 0",
                    spread["puback_timeouts"] + multiplexed["puback_timeouts"] == 0,
                )
    report.notes.append(
        "One run per point; the fleet (one pm simulate process) and the requester share the "
        "machine's cores with the broker."
    )
    report.write()
    return report


if __name__ == "__main__":
    main()
