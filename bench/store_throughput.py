"""End-to-end tasks/s of the engine with the file store vs ``:memory:`` (the target: file >= 80%).

Each round runs the same workload twice, once per store, alternating which goes first: ``jobs``
jobs submitted at once, each ``entries`` x ``devices`` tasks; the figure is the tasks settled
per second from the first submit to the last job's end. The ratio file / memory is taken per
round; the median over rounds is reported.

Two modes:

- ``engine`` (default): :func:`pm.engine.open_engine` with a publisher that answers every
  request at once through ``engine.on_mqtt_message``: dispatch, job aggregation and the
  store, without the network, so the store's share of the cost is as large as it can be.
- ``gateway``: the real gateway (:func:`pm.gateway.run_gateway`: embedded amqtt broker on a
  free port, MQTT client, engine, HTTP) and :func:`pm.simulator.run_simulator` devices, all in
  this process; jobs are submitted through ``gateway.engine.submit``.

Usage::

    .venv/bin/python bench/store_throughput.py [--mode engine|gateway] [--rounds 5]
        [--jobs 4] [--entries 50] [--devices 100] [--commit-interval 0.05]
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio

from pm.config import Config
from pm.engine import Engine, open_engine
from pm.gateway import run_gateway
from pm.schemas import JobRequest
from pm.simulator import SimulatorSettings, generate_mac_ids, run_simulator

_request_decoder = msgspec.json.Decoder()


class AnsweringPublisher:
    """Stands in for MQTT and the devices: every request is answered 200 at once."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def publish(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False) -> bool:
        if not payload or self.engine is None:
            return True
        request = _request_decoder.decode(payload)
        answer = msgspec.json.encode({"id": request["id"], "code": 200, "data": {}})
        self.engine.on_mqtt_message(request["tunnel"], answer)
        return True


def workload(devices: list[str], entries: int) -> JobRequest:
    return msgspec.convert(
        {
            "batch": [
                {"method": "get", "resource": f"/bench/{n}", "__destination": devices}
                for n in range(entries)
            ]
        },
        JobRequest,
    )


async def run_jobs(engine: Engine, request: JobRequest, jobs: int) -> tuple[float, float]:
    """Submit ``jobs`` copies at once; returns seconds until all have ended, and until all
    of it is committed (``store.sync()``)."""
    start = time.perf_counter()
    submitted = [await engine.submit(request) for _ in range(jobs)]
    for job in submitted:
        await job.ended.wait()
        assert job.record.status == "resolved", job.record.status
    ended = time.perf_counter() - start
    await engine.store.sync()
    return ended, time.perf_counter() - start


async def longest_commit_gap(engine: Engine, gaps: list[float]) -> None:
    """Appends the longest time between two commit completions seen so far (polled every
    5 ms): while changes keep coming, that is what a crash at the worst moment loses."""
    store = engine.store
    seen, last = store.commits, time.perf_counter()
    gaps.append(0.0)
    while True:
        await trio.sleep(0.005)
        now = time.perf_counter()
        if store.commits != seen:
            seen, last = store.commits, now
        gaps[-1] = max(gaps[-1], now - last)


@asynccontextmanager
async def engine_mode(config: Config, devices: list[str]) -> AsyncIterator[Engine]:
    publisher = AnsweringPublisher()
    async with open_engine(config, publisher) as engine:
        publisher.engine = engine
        yield engine


@asynccontextmanager
async def gateway_mode(config: Config, devices: list[str]) -> AsyncIterator[Engine]:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            gateway = await nursery.start(run_gateway, config)
            await nursery.start(
                run_simulator,
                SimulatorSettings(
                    host=gateway.mqtt_host,
                    port=gateway.mqtt_port,
                    devices=devices,
                    connections=min(len(devices), 20),
                ),
            )
        assert gateway.engine is not None
        yield gateway.engine
        nursery.cancel_scope.cancel()


def make_config(store_path: str, commit_interval: float) -> Config:
    return msgspec.convert(
        {
            "http": {"host": "127.0.0.1", "port": 0},
            "broker": {"host": "127.0.0.1", "port": 0},
            "mqtt": {"client_id": f"pm-bench-{uuid.uuid4().hex[:8]}"},
            "tasks": {"default_timeout": 60.0},
            "store": {"path": store_path, "commit_interval": commit_interval},
        },
        Config,
    )


async def measure(
    mode: Callable[[Config, list[str]], Any],
    store_path: str,
    arguments: argparse.Namespace,
    devices: list[str],
) -> tuple[float, float, int, float]:
    """One run on a fresh store; returns tasks/s to the end of the jobs, tasks/s until all
    is committed, the number of commits made during the run, and the longest gap between
    two commits during the run (seconds)."""
    config = make_config(store_path, arguments.commit_interval)
    request = workload(devices, arguments.entries)
    async with mode(config, devices) as engine:
        await run_jobs(engine, workload(devices, 1), 1)  # warm-up: device actors, connections
        commits = engine.store.commits
        gaps: list[float] = []
        async with trio.open_nursery() as probe:
            probe.start_soon(longest_commit_gap, engine, gaps)
            ended, durable = await run_jobs(engine, request, arguments.jobs)
            probe.cancel_scope.cancel()
        commits = engine.store.commits - commits
    tasks = arguments.jobs * arguments.entries * len(devices)
    return tasks / ended, tasks / durable, commits, gaps[0]


async def main(arguments: argparse.Namespace) -> None:
    mode = {"engine": engine_mode, "gateway": gateway_mode}[arguments.mode]
    devices = generate_mac_ids(arguments.devices)
    tasks = arguments.jobs * arguments.entries * arguments.devices
    print(
        f"mode={arguments.mode}: {arguments.jobs} jobs x {arguments.entries} entries x"
        f" {arguments.devices} devices = {tasks:,} tasks per run,"
        f" commit_interval={arguments.commit_interval}s"
    )
    print(
        f"{'round':>5} {'memory t/s':>11} {'file t/s':>11} {'file/mem':>9}"
        f" {'durable mem':>12} {'durable file':>12} {'file/mem':>9} {'commits m/f':>12}"
        f" {'max gap m/f s':>14}"
    )
    columns: list[list[float]] = [[] for _ in range(6)]
    with tempfile.TemporaryDirectory() as directory:
        for round_number in range(arguments.rounds):
            order = ["memory", "file"] if round_number % 2 == 0 else ["file", "memory"]
            rates: dict[str, tuple[float, float, int, float]] = {}
            for kind in order:
                path = (
                    ":memory:" if kind == "memory" else str(Path(directory) / f"{round_number}.db")
                )
                rates[kind] = await measure(mode, path, arguments, devices)
            (memory, memory_durable, memory_commits, memory_gap) = rates["memory"]
            (file, file_durable, file_commits, file_gap) = rates["file"]
            row = [memory, file, file / memory, memory_durable, file_durable]
            row.append(file_durable / memory_durable)
            for column, value in zip(columns, row, strict=True):
                column.append(value)
            print(
                f"{round_number + 1:>5} {memory:>11,.0f} {file:>11,.0f} {file / memory:>9.1%}"
                f" {memory_durable:>12,.0f} {file_durable:>12,.0f} {row[5]:>9.1%}"
                f" {f'{memory_commits}/{file_commits}':>12}"
                f" {f'{memory_gap:.2f}/{file_gap:.2f}':>14}"
            )
    medians = [statistics.median(column) for column in columns]
    print(
        f"{'median':>5} {medians[0]:>11,.0f} {medians[1]:>11,.0f} {medians[2]:>9.1%}"
        f" {medians[3]:>12,.0f} {medians[4]:>12,.0f} {medians[5]:>9.1%}"
    )
    print(
        "ratios are medians of per-round ratios (the target is file/mem >= 80%);"
        " 'durable' counts until store.sync() returns after the last job ended;"
        " 'max gap' is the longest time without a commit during the run (what a crash could"
        " lose)"
    )


if __name__ == "__main__":
    # Hypercorn sets its own level on each start: filter its "Running on ..." lines instead.
    logging.getLogger("hypercorn.error").addFilter(lambda record: record.levelno >= logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["engine", "gateway"], default="engine")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--entries", type=int, default=50)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--commit-interval", type=float, default=0.05)
    arguments = parser.parse_args()
    print("command:", shlex.join([".venv/bin/python", *sys.argv]))
    trio.run(main, arguments)
