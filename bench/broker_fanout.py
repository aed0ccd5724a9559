"""The embedded broker alone: round trips/s with 1 vs 1,000 vs 10,000 device connections, and
its memory per idle device connection; our amqtt subclass beside stock amqtt 0.12.1.

For each broker and each connection count C, a bare broker process (``python -m
pm.broker.amqtt``, ``--stock-amqtt`` for amqtt's own Broker) and a fleet of C devices, one
MQTT connection and one subscription each (``pm simulate --devices C``), are started; the
benchmark's client then makes ``--requests`` sequential QoS 1 Sanji round trips, cycling
over the C devices. The ratio is rt/s with C connections over rt/s with 1, where the
1-connection figure is the mean of a run before and a run after the others (the machine
drifts). Memory per idle connection is (broker RSS with the fleet connected - RSS before) / C.

Usage::

    .venv/bin/python -m bench.broker_fanout [--connections 1000 10000] [--requests 2000]
        [--brokers ours stock mosquitto]
"""

from __future__ import annotations

import argparse
import itertools
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


def _one(broker: str, connections: int, requests: int) -> dict[str, float]:
    """One point; a fleet that cannot connect in time is recorded (rt/s 0), not fatal:
    stock amqtt does not connect 10,000 devices within the fleet's 120 s."""
    try:
        return _measure_one(broker, connections, requests)
    except RuntimeError as error:
        print(f"{broker} with {connections} connections failed: {str(error)[:200]}")
        return {
            "rt_per_second": 0.0,
            "kib_per_connection": float("nan"),
            "connect_seconds": -1,
            "broker_cpu_ms_per_rt": float("nan"),
            "fleet_cpu_ms_per_rt": float("nan"),
        }


def _measure_one(broker: str, connections: int, requests: int) -> dict[str, float]:
    with workdir() as directory:
        engine = "mosquitto" if broker == "mosquitto" else "amqtt"
        server = start_broker(engine, directory, stock=broker == "stock")
        try:
            time.sleep(0.2)
            before = memory_kib(server.pid)
            started = time.monotonic()
            fleet = start_fleet(directory, int(server.info["port"]), connections, None)
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
                    lambda: raw_round_trips(int(server.info["port"]), sequence, window=1)
                )
                broker_cpu = cpu_seconds(server.pid) - broker_cpu
                fleet_cpu = cpu_seconds(fleet.pid) - fleet_cpu
            finally:
                fleet.stop()
        finally:
            server.stop()
    return {
        "rt_per_second": rate,
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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    main()
