"""Scenario 4: one-task jobs in sequence, POST to resolved: p50 / p99 latency.

One gateway and one device (separate processes). Each job is posted, then ``GET /jobs/{id}``
is polled back to back (0.2 ms apart) until it is final; the latency is the client's time
from sending the POST to reading the final status, on one kept-alive HTTP connection. Jobs
alternate between two clients: a lean one (h11 on a trio socket, :mod:`bench._http`), whose
figure is the gateway's and is the one held to the target, and httpx, which adds its own
~1-1.5 ms per request. The job's own ``finishAt - createdAt`` (server side, millisecond
stamps) is reported beside them.

Usage::

    .venv/bin/python -m bench.latency [--jobs 200] [--broker amqtt|mosquitto]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

import httpx
import msgspec
import trio

from bench._http import LeanHttpClient
from bench._load import FINAL_STATUSES, http_client, job_body, parse_time, percentile
from bench._processes import fleet_ids, start_fleet, start_gateway, workdir
from bench._report import Report

_decode = msgspec.json.Decoder(dict[str, Any]).decode


async def _one_job_lean(client: LeanHttpClient, body: bytes) -> dict[str, Any]:
    status, answer = await client.request("POST", "/jobs", body)
    if status != 200:
        raise RuntimeError(f"POST /jobs answered {status}: {answer[:200]!r}")
    job_id = _decode(answer)["id"]
    while True:
        status, answer = await client.request("GET", f"/jobs/{job_id}")
        job = _decode(answer)
        if job["status"] in FINAL_STATUSES:
            return job
        await trio.sleep(0.0002)


async def _one_job_httpx(client: httpx.AsyncClient, body: bytes) -> dict[str, Any]:
    response = await client.post(
        "/jobs", content=body, headers={"content-type": "application/json"}
    )
    response.raise_for_status()
    job_id = response.json()["id"]
    while True:
        job: dict[str, Any] = (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in FINAL_STATUSES:
            return job
        await trio.sleep(0.0002)


async def _measure(url: str, jobs: int) -> dict[str, list[float]]:
    """Jobs alternate between the two clients, so both see the same machine."""
    body = job_body(fleet_ids(1))
    figures: dict[str, list[float]] = {"lean_ms": [], "httpx_ms": [], "server_ms": []}
    async with LeanHttpClient(url) as lean, http_client(url) as httpx_client:
        for n in range(2 * (jobs + 10)):  # the first 10 of each client warm up, not counted
            started = time.perf_counter()
            if n % 2 == 0:
                job = await _one_job_lean(lean, body)
            else:
                job = await _one_job_httpx(httpx_client, body)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if job["status"] != "resolved":
                raise RuntimeError(f"job {job['id']} ended {job['status']}")
            if n >= 20:
                figures["lean_ms" if n % 2 == 0 else "httpx_ms"].append(elapsed_ms)
                if n % 2 == 0:
                    figures["server_ms"].append(
                        (parse_time(job["finishAt"]) - parse_time(job["createdAt"])) * 1000
                    )
    return figures


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--broker", choices=("amqtt", "mosquitto"), default="amqtt")
    args = parser.parse_args(argv)
    with workdir() as directory:
        gateway = start_gateway(directory, engine=args.broker)
        fleet = start_fleet(directory, int(gateway.info["mqtt_port"]), 1, None)
        try:
            figures = trio.run(_measure, str(gateway.info["url"]), args.jobs)
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
        ("POST -> final status seen, lean client (h11)", figures["lean_ms"]),
        ("POST -> final status seen, httpx client", figures["httpx_ms"]),
        ("createdAt -> finishAt (server, ms stamps)", figures["server_ms"]),
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
    p50 = percentile(figures["lean_ms"], 0.5)
    report.target(f"(4) p50 POST -> resolved, {args.broker}", p50, "<= 5 ms", p50 <= 5.0, " ms")
    report.notes.append(
        "The target is read on the lean client: it costs tens of microseconds per request, "
        "httpx ~1-1.5 ms of its own CPU (its row shows what a typical Python client sees). "
        "Jobs alternate between the two clients."
    )
    report.raw = figures
    report.write()
    return report


if __name__ == "__main__":
    main()
