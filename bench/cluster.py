"""Issue 16 item 5: one job through a cluster of 1, 2 and 3 gateways on one mosquitto and one
PostgreSQL (``cluster.enabled = true``).

For each number of gateways G (``--gateways``): a fresh database on the PostgreSQL server at
``--server`` (created, then dropped), G ``pm serve`` processes with ``broker.embedded =
false`` on one mosquitto we start, and one fleet process (``pm simulate``, devices answering
at once); once every gateway holds its share of the shards, for each size N (``--sizes``) a
warm-up job, then ``--rounds`` jobs of N tasks to N devices, each posted to the gateway of
its round in turn. A job's time runs from its POST to its ``finishAt`` (the last task's
settle, read back from the database by the gateway it was posted to). Each gateway's CPU
seconds (``/proc``) are read before and after each job: the table gives the cluster's
gateway CPU per task (every gateway's together) and the busiest gateway's share.

What bounds it on one machine: every process (G gateways, the broker, the fleet, the
database) shares its cores, so more gateways add CPU to contend for, not capacity; the
figures show how the work splits and what a task costs the cluster, the capacity model
scales them per core (docs/scale-out.md).

Usage::

    .venv/bin/python -m bench.cluster --server postgresql://postgres@127.0.0.1:PORT
        [--gateways 1 2 3] [--sizes 1000 10000] [--rounds 3] [--connections 100]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import psycopg
import trio

from bench._load import http_client, run_job
from bench._processes import (
    Service,
    cpu_seconds,
    fleet_ids,
    start_broker,
    start_fleet,
    start_gateway,
    workdir,
)
from bench._report import Report, median

SHARDS_READY_TIMEOUT = 60.0


def database_url(server: str, name: str) -> str:
    """``server`` (a URL without a database, or with one) naming database ``name``."""
    base, _, query = server.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{name}" + (f"?{query}" if query else "")


def create_database(server: str) -> str:
    name = f"pm_cluster_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url(server, "postgres"), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")  # a name made here, never a user's
    return name


def drop_database(server: str, name: str) -> None:
    with psycopg.connect(database_url(server, "postgres"), autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def owners(url: str) -> int:
    """How many gateways hold unexpired shard leases."""
    with psycopg.connect(url) as connection:
        (count,) = connection.execute(
            "SELECT count(DISTINCT owner) FROM shard_leases"
            " WHERE expires_at > extract(epoch FROM clock_timestamp())"
        ).fetchone()
    return int(count)


def start_cluster(
    directory: Path, gateways: int, mqtt_port: int, url: str, args: argparse.Namespace
) -> list[Service]:
    started = [
        start_gateway(
            directory,
            external_port=mqtt_port,
            name=f"gw-{n}",
            extra_env={
                "PM_STORE_URL": url,
                "PM_CLUSTER_ENABLED": "true",
                "PM_CLUSTER_GATEWAY_ID": f"gw-{n}",
                "PM_CLUSTER_SHARDS": str(args.shards),
                "PM_CLUSTER_LEASE_TTL": str(args.lease_ttl),
                "PM_TOPICS_RESPONSE": "/remote/{device}/response/{gateway}",
            },
        )
        for n in range(gateways)
    ]
    deadline = time.monotonic() + SHARDS_READY_TIMEOUT
    while owners(url) < gateways:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{gateways} gateways did not all get shards in time")
        time.sleep(0.1)
    return started


async def measure(
    gateways: list[Service], devices: list[str], rounds: int
) -> list[tuple[float, float, float]]:
    """(tasks/s, cluster gateway CPU ms per task, busiest gateway's share) of each round."""
    results = []
    clients = [http_client(str(gateway.info["url"])) for gateway in gateways]
    try:
        await run_job(clients[0], devices[: min(len(devices), 100)])  # warm-up
        for round_number in range(rounds):
            before = [cpu_seconds(gateway.pid) for gateway in gateways]
            run = await run_job(clients[round_number % len(clients)], devices)
            spent = [cpu_seconds(g.pid) - b for g, b in zip(gateways, before, strict=True)]
            if run.status != "resolved" or run.errors:
                raise RuntimeError(f"job {run.job_id} ended {run.status}, {run.errors} errors")
            total = sum(spent)
            results.append(
                (run.tasks_per_second, 1000 * total / run.tasks, max(spent) / max(total, 1e-9))
            )
    finally:
        for client in clients:
            await client.aclose()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--server", required=True, help="postgresql:// URL of a server")
    parser.add_argument("--gateways", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--shards", type=int, default=256)
    parser.add_argument("--lease-ttl", type=float, default=10.0)
    parser.add_argument("--scenario", default="cluster")
    args = parser.parse_args(argv)
    report = Report(
        scenario=args.scenario,
        title="One job through a cluster of gateways (mosquitto, PostgreSQL)",
        command=shlex.join([sys.executable.rsplit("/", 1)[-1], "-m", "bench.cluster"])
        + " "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        parameters=vars(args),
        columns=[
            "gateways",
            "N",
            "job tasks/s",
            "cluster gateway CPU ms per task",
            "busiest gateway's share of it",
        ],
    )
    for gateways in args.gateways:
        with workdir() as directory, ExitStack() as stack:
            broker = start_broker("mosquitto", directory)
            stack.callback(broker.stop)
            name = create_database(args.server)
            stack.callback(drop_database, args.server, name)
            url = database_url(args.server, name)
            cluster = start_cluster(directory, gateways, int(broker.info["port"]), url, args)
            for gateway in cluster:
                stack.callback(gateway.stop)
            for size in args.sizes:
                fleet = start_fleet(directory, int(broker.info["port"]), size, args.connections)
                try:
                    rounds = trio.run(measure, cluster, fleet_ids(size), args.rounds)
                finally:
                    fleet.stop()
                report.rows.append(
                    [
                        gateways,
                        size,
                        median([r[0] for r in rounds]),
                        median([r[1] for r in rounds]),
                        median([r[2] for r in rounds]),
                    ]
                )
                report.raw[f"{gateways}x{size}"] = rounds
    report.notes.append(
        "every process shares this machine's cores: more gateways add CPU to contend for, "
        "not capacity (see the module docstring)"
    )
    report.write()


if __name__ == "__main__":
    main()
