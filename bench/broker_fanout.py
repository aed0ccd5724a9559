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
same burst to N devices multiplexed over one connection. Each of the two fleets gets
``--bursts`` bursts in a row (its rate: their median), the two alternate (which goes first
swaps every round) for ``--rounds`` rounds, and the ratio is the median of the rounds'
ratios. Also: broker and fleet CPU per round trip, how many of amqtt's PUBACK waits expired
(the broker child reports them at its stop), and the load average around the run (other
processes on the machine move the rates; the CPU per round trip moves less).

Usage::

    .venv/bin/python -m bench.broker_fanout [--connections 1000 10000] [--requests 2000]
        [--brokers ours stock mosquitto] [--burst [--bursts 3] [--rounds 1]]
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import sys
import time

import trio

from bench._load import raw_round_trips
from bench._processes import (
    READY_TIMEOUT,
    cpu_seconds,
    fleet_ids,
    memory_kib,
    start_broker,
    start_fleet,
    workdir,
)
from bench._report import Report, median

# Seconds per 1,000 devices the fleet may take to connect, beyond READY_TIMEOUT: 10,000 took
# 9.4 s on a quiet machine, over 200 s while other sessions loaded it.
_CONNECT_SECONDS_PER_1000 = 30.0


def _one(
    broker: str,
    connections: int,
    requests: int,
    *,
    window: int = 1,
    multiplexed: bool = False,
    bursts: int = 1,
) -> dict[str, float]:
    """One point; a fleet that cannot connect in time is recorded (rt/s 0), not fatal:
    stock amqtt does not connect 10,000 devices within the fleet's 120 s.

    Args:
      connections: devices, one MQTT connection each (``multiplexed``: all over one).
      requests: round trips, cycling over the devices.
      window: requests outstanding at once (1: sequential; ``requests``: one burst).
      bursts: runs of ``requests`` on the same fleet; the rate is their median.
    """
    try:
        return _measure_one(broker, connections, requests, window, multiplexed, bursts)
    except RuntimeError as error:
        print(f"{broker} with {connections} connections failed: {str(error)[:200]}")
        return {
            "rt_per_second": 0.0,
            "rates": [],
            "kib_per_connection": float("nan"),
            "connect_seconds": -1,
            "broker_cpu_ms_per_rt": float("nan"),
            "fleet_cpu_ms_per_rt": float("nan"),
            "puback_timeouts": float("nan"),
        }


def _measure_one(
    broker: str, connections: int, requests: int, window: int, multiplexed: bool, bursts: int
) -> dict[str, float]:
    with workdir() as directory:
        engine = "mosquitto" if broker == "mosquitto" else "amqtt"
        server = start_broker(engine, directory, stock=broker == "stock")
        try:
            time.sleep(0.2)
            before = memory_kib(server.pid)
            started = time.monotonic()
            fleet = start_fleet(
                directory,
                int(server.info["port"]),
                connections,
                1 if multiplexed else None,
                ready_timeout=READY_TIMEOUT + _CONNECT_SECONDS_PER_1000 * connections / 1000,
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
                rates = [
                    trio.run(
                        lambda: raw_round_trips(int(server.info["port"]), sequence, window=window)
                    )
                    for _ in range(bursts)
                ]
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
        "rt_per_second": median(rates),
        "rates": rates,
        "puback_timeouts": timeouts,
        "kib_per_connection": (after - before) / connections,
        "connect_seconds": connect_seconds,
        "broker_cpu_ms_per_rt": broker_cpu * 1000 / (requests * bursts),
        "fleet_cpu_ms_per_rt": fleet_cpu * 1000 / (requests * bursts),
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
    parser.add_argument(
        "--bursts", type=int, default=3, help="--burst: bursts per fleet (their median)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="--burst: rounds per N, each a fleet of each kind, their order swapped each round",
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
    """Burst mode: per count N and broker, ``--rounds`` rounds of a fleet of N devices with
    one connection each and one of N devices over one connection, alternating, each given
    ``--bursts`` bursts of N requests to its N devices."""
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
            "N conns / 1 conn (median of rounds)",
            "broker CPU ms/rt, N conns / 1 conn",
            "fleet CPU ms/rt, N conns / 1 conn",
            "PUBACK waits expired, N conns / 1 conn",
        ],
    )
    load_before = os.getloadavg()
    for broker in args.brokers:
        counts = args.connections
        if broker == "stock" and args.stock_connections:
            counts = args.stock_connections
        for count in counts:
            rounds: list[dict[str, dict[str, float]]] = []
            for number in range(args.rounds):
                points: dict[str, dict[str, float]] = {}
                for kind in ("spread", "multiplexed")[:: 1 if number % 2 == 0 else -1]:
                    points[kind] = _one(
                        broker,
                        count,
                        count,
                        window=count,
                        multiplexed=kind == "multiplexed",
                        bursts=args.bursts,
                    )
                rounds.append(points)
            report.raw[f"{broker}_{count}"] = rounds
            _burst_row(report, broker, count, rounds)
    load_after = os.getloadavg()
    report.raw["load_average"] = {"before": load_before, "after": load_after}
    report.notes.append(
        "Rates are medians of each fleet's bursts; the ratio is the median of the rounds' "
        "ratios. The fleet (one pm simulate process) and the requester share the machine's "
        "cores with the broker. Load average (1 min) before / after the run: "
        f"{load_before[0]:.2f} / {load_after[0]:.2f}."
    )
    report.write()
    return report


def _burst_row(
    report: Report, broker: str, count: int, rounds: list[dict[str, dict[str, float]]]
) -> None:
    def both(key: str) -> list[float]:
        return [points[kind][key] for points in rounds for kind in ("spread", "multiplexed")]

    spread = {
        key: median([r["spread"][key] for r in rounds])
        for key in rounds[0]["spread"]
        if key != "rates"
    }
    multiplexed = {
        key: median([r["multiplexed"][key] for r in rounds])
        for key in rounds[0]["multiplexed"]
        if key != "rates"
    }
    ratios = [
        r["spread"]["rt_per_second"] / r["multiplexed"]["rt_per_second"]
        if r["multiplexed"]["rt_per_second"]
        else 0.0
        for r in rounds
    ]
    ratio = median(ratios)
    expired = sum(both("puback_timeouts"))
    report.rows.append(
        [
            broker,
            count,
            spread["rt_per_second"],
            multiplexed["rt_per_second"],
            ratio,
            f"{spread['broker_cpu_ms_per_rt']:.3g} / {multiplexed['broker_cpu_ms_per_rt']:.3g}",
            f"{spread['fleet_cpu_ms_per_rt']:.3g} / {multiplexed['fleet_cpu_ms_per_rt']:.3g}",
            f"{sum(r['spread']['puback_timeouts'] for r in rounds):g} / "
            f"{sum(r['multiplexed']['puback_timeouts'] for r in rounds):g}",
        ]
    )
    if broker == "ours":
        report.target(f"burst rt/s {count:,} conns / 1 conn", ratio, ">= 0.80", ratio >= 0.8)
        report.target(f"PUBACK waits expired in a {count:,} burst", expired, "= 0", expired == 0)


if __name__ == "__main__":
    main()
