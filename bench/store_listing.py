"""Latency of one ``GET /jobs`` page read from the store, with 100,000 finished jobs in history.

Fills a file database through the store's own write path (``Store.job_created`` in large
group commits), then times :meth:`pm.store.Store.list_jobs` as the engine calls it (through
the worker thread): the first page, the first page of a ``status=`` filter, and a deep page.

Usage::

    .venv/bin/python bench/store_listing.py [--jobs 100000] [--tasks 3] [--rounds 200]
        [--db PATH]    # reuse PATH if it already holds the jobs (else it is filled)

Without ``--db`` the database goes to a temporary directory and is removed afterwards.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import trio

from pm.schemas import BatchEntry
from pm.state import JobRecord, expand_batch
from pm.store import Store, open_store

# Status mix of the history: mostly resolved, some timeouts and cancels.
STATUS_CYCLE = ("resolved",) * 16 + ("timeout",) * 3 + ("cancelled",)
FILL_BATCH = 10_000


def _tunnel(device: str) -> str:
    return f"/remote/{device}/response"


async def fill(store: Store, jobs: int, tasks_per_job: int) -> float:
    """Write ``jobs`` finished jobs; returns seconds taken."""
    entry = msgspec.convert(
        {
            "method": "get",
            "resource": "/system/status",
            "__destination": [f"dev-{i}" for i in range(tasks_per_job)],
        },
        BatchEntry,
    )
    start = time.perf_counter()
    created_at = time.time() - jobs
    for first in range(0, jobs, FILL_BATCH):
        count = min(FILL_BATCH, jobs - first)
        job_id, task_id = await store.allocate_ids(count, count * tasks_per_job)
        task_ids = iter(range(task_id, task_id + count * tasks_per_job))
        for n in range(count):
            at = created_at + first + n
            tasks = expand_batch(
                job_id + n,
                [entry],
                next_task_id=task_ids.__next__,
                tunnel_for=_tunnel,
                default_timeout=30.0,
                now=at,
            )
            record = JobRecord(job_id + n, tasks, None, at)
            status = STATUS_CYCLE[(first + n) % len(STATUS_CYCLE)]
            if status == "resolved":
                for task in tasks:
                    record.settle(task, "resolved", {"uptime": n}, at + 0.5)
            else:
                record.finish(status, at + 0.5)  # type: ignore[arg-type]
            store.job_created(record, [entry])
        await store.sync()
    return time.perf_counter() - start


async def time_query(
    store: Store, rounds: int, *, status: str | None, offset: int
) -> tuple[list[float], int, int]:
    """Returns latencies (ms), the page length and the total."""
    latencies = []
    page: list = []
    total = 0
    for _ in range(rounds):
        start = time.perf_counter()
        page, total = await store.list_jobs(status=status, limit=100, offset=offset)
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies, len(page), total


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def main(arguments: argparse.Namespace, path: Path) -> None:
    store = await open_store(path, commit_interval=3600.0)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            _, existing = await store.list_jobs(status=None, limit=1, offset=0)
            if existing < arguments.jobs:
                if existing:
                    sys.exit(f"{path} holds {existing} jobs, fewer than {arguments.jobs}")
                seconds = await fill(store, arguments.jobs, arguments.tasks)
                rows = arguments.jobs * (2 + arguments.tasks)
                print(
                    f"filled {arguments.jobs} jobs x {arguments.tasks} tasks in {seconds:.1f} s"
                    f" ({rows / seconds:,.0f} rows/s through Store.job_created)"
                )
            cases = [
                ("first page", None, 0, arguments.rounds),
                ("status=timeout, first page", "timeout", 0, arguments.rounds),
                ("status=resolved, first page", "resolved", 0, arguments.rounds),
                ("deep page (offset 50,000)", None, 50_000, max(20, arguments.rounds // 4)),
                (
                    "status=resolved, offset 50,000",
                    "resolved",
                    50_000,
                    max(20, arguments.rounds // 4),
                ),
            ]
            size = path.stat().st_size / 2**20  # noqa: ASYNC240 (a benchmark, once)
            print(f"\nlist_jobs(limit=100) on {path} ({size:.0f} MiB)")
            print(f"{'query':34} {'rows':>5} {'total':>7} {'p50 ms':>8} {'p99 ms':>8} {'n':>5}")
            for name, status, offset, rounds in cases:
                await time_query(store, 3, status=status, offset=offset)  # warm the cache
                latencies, rows, total = await time_query(
                    store, rounds, status=status, offset=offset
                )
                print(
                    f"{name:34} {rows:>5} {total:>7} {statistics.median(latencies):>8.2f}"
                    f" {percentile(latencies, 0.99):>8.2f} {rounds:>5}"
                )
            nursery.cancel_scope.cancel()
    finally:
        store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--tasks", type=int, default=3, help="tasks per job")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--db", type=Path, default=None)
    arguments = parser.parse_args()
    print("command:", shlex.join([".venv/bin/python", *sys.argv]))
    if arguments.db is not None:
        trio.run(main, arguments, arguments.db)
    else:
        with tempfile.TemporaryDirectory() as directory:
            trio.run(main, arguments, Path(directory) / "listing.db")
