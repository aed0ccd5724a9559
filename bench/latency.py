"""Scenario 4: one-task jobs in sequence, POST to resolved: p50 / p99 latency.

One gateway and one device (separate processes). Each job is posted, then ``GET /jobs/{id}``
is polled back to back (0.2 ms apart) until it is final; the latency is the client's time
from sending the POST to reading the final status, on one kept-alive HTTP connection. The
job's own ``finishAt - createdAt`` (server side, millisecond stamps) is reported beside it.

Usage::

    .venv/bin/python -m bench.latency [--jobs 200] [--broker amqtt|mosquitto]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import trio

from bench._load import FINAL_STATUSES, http_client, job_body, parse_time, percentile
from bench._processes import fleet_ids, start_fleet, start_gateway, workdir
from bench._report import Report


async def _measure(url: str, jobs: int) -> tuple[list[float], list[float]]:
    body = job_body(fleet_ids(1))
    client_ms: list[float] = []
    server_ms: list[float] = []
    async with http_client(url) as client:
        for n in range(jobs + 10):  # the first 10 warm up and are not counted
            started = time.perf_counter()
            response = await client.post(
                "/jobs", content=body, headers={"content-type": "application/json"}
            )
            job_id = response.json()["id"]
            while True:
                job = (await client.get(f"/jobs/{job_id}")).json()
                if job["status"] in FINAL_STATUSES:
                    break
                await trio.sleep(0.0002)
            if job["status"] != "resolved":
                raise RuntimeError(f"job {job_id} ended {job['status']}")
            if n >= 10:
                client_ms.append((time.perf_counter() - started) * 1000)
                server_ms.append(
                    (parse_time(job["finishAt"]) - parse_time(job["createdAt"])) * 1000
                )
    return client_ms, server_ms


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--broker", choices=("amqtt", "mosquitto"), default="amqtt")
    args = parser.parse_args(argv)
    with workdir() as directory:
        gateway = start_gateway(directory, engine=args.broker)
        fleet = start_fleet(directory, int(gateway.info["mqtt_port"]), 1, None)
        try:
            client_ms, server_ms = trio.run(_measure, str(gateway.info["url"]), args.jobs)
        finally:
            fleet.stop()
            gateway.stop()
    report = Report(
        scenario="latency" if args.broker == "amqtt" else f"latency-{args.broker}",
        title=f"Scenario 4: {args.jobs} one-task jobs in sequence ({args.broker})",
        command="python -m bench.latency " + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=["measure", "p50 ms", "p90 ms", "p99 ms", "max ms"],
    )
    for name, values in (
        ("POST -> final status seen (client)", client_ms),
        ("createdAt -> finishAt (server)", server_ms),
    ):
        report.rows.append(
            [
                name,
                percentile(values, 0.5),
                percentile(values, 0.9),
                percentile(values, 0.99),
                max(values),
            ]
        )
    p50 = percentile(client_ms, 0.5)
    report.target(f"(4) p50 POST -> resolved, {args.broker}", p50, "<= 5 ms", p50 <= 5.0, " ms")
    report.raw = {"client_ms": client_ms, "server_ms": server_ms}
    report.write()
    return report


if __name__ == "__main__":
    main()
