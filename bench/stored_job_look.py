"""What one look at a job costs a gateway that follows it through the database (a watcher of
a job another gateway runs, ``pm/stored_job_feed.py``): wall and CPU time of
``look_at_job`` from a second connection, for one job of ``--tasks`` tasks, at three points
of its life:

- ``all unsettled``: nothing settled yet, every task row is read (the worst look);
- ``most just settled``: all but 1% settled since the previous look (read by id, in
  statements of 500 ids, plus the 1% still unsettled);
- ``1% unsettled``: the steady end of a job (only those rows are read).

Each figure is a median over ``--rounds``. One look per watcher per update interval
(``watchers.coalesce_interval``, 0.1 s by default) is what following costs the database.

Usage::

    .venv/bin/python -m bench.stored_job_look [--tasks 10000] [--rounds 7] \
        [--stores sqlite-file postgresql://postgres@127.0.0.1:PORT/pm]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._report import Report, median
from bench.store_commit import CREATED, _commit, _job
from pm.store import migrate
from pm.store._connection import Connection
from pm.store._job_changes import look_at_job
from pm.store._pending import PendingChanges
from pm.store._sqlite_connection import connect_sqlite

STAGES = ("all unsettled", "most just settled", "1% unsettled")


def _connector(store: str, directory: Path) -> Callable[[], Connection]:
    if store == "sqlite-file":
        return lambda: connect_sqlite(directory / "pm.db")
    from pm.store._postgres_connection import connect_postgres

    return lambda: connect_postgres(store)


def _timed(connection: Connection, previous: frozenset[int]) -> tuple[float, float, frozenset[int]]:
    wall, cpu = time.perf_counter(), time.process_time()
    look = look_at_job(connection, job_id=1, previously_unsettled=previous)
    assert look is not None
    return time.perf_counter() - wall, time.process_time() - cpu, look.unsettled


def measure(store: str, tasks: int) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of a look at each stage, the job written by an owner connection."""
    with tempfile.TemporaryDirectory() as directory:
        connect = _connector(store, Path(directory))
        owner, watcher = connect(), connect()
        try:
            migrate(owner)
            with owner.transaction():
                owner.execute("DELETE FROM jobs WHERE id = 1")
            record, entries = _job(tasks)
            created = PendingChanges()
            created.job_created(record, entries)
            _commit(owner, created)
            seconds = {}
            wall, cpu, unsettled = _timed(watcher, frozenset())
            seconds["all unsettled"] = (wall, cpu)
            settled = PendingChanges()
            for task in record.tasks[: tasks - tasks // 100]:
                record.mark_sent(task, CREATED + 1)
                record.settle(task, "resolved", {"ok": True}, CREATED + 2, 200)
                settled.task_changed(task)
            settled.job_changed(record)
            _commit(owner, settled)
            wall, cpu, unsettled = _timed(watcher, unsettled)
            seconds["most just settled"] = (wall, cpu)
            wall, cpu, _ = _timed(watcher, unsettled)
            seconds["1% unsettled"] = (wall, cpu)
            with owner.transaction():
                owner.execute("DELETE FROM jobs WHERE id = 1")
            return seconds
        finally:
            owner.close()
            watcher.close()


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--stores", nargs="+", default=["sqlite-file"])
    parser.add_argument("--scenario", default="stored_job_look", help="result file name")
    args = parser.parse_args(argv)
    report = Report(
        scenario=args.scenario,
        title="One look at a job another gateway runs (medians)",
        command="python -m bench.stored_job_look "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=["store", "tasks", "stage", "wall ms", "gateway CPU ms"],
    )
    for store in args.stores:
        runs = [measure(store, args.tasks) for _ in range(args.rounds)]
        label = "PostgreSQL" if store.startswith("postgres") else store
        report.raw[label] = runs
        for stage in STAGES:
            wall = median([run[stage][0] for run in runs]) * 1000
            cpu = median([run[stage][1] for run in runs]) * 1000
            report.rows.append([label, args.tasks, stage, wall, cpu])
    report.notes.append(
        "Gateway CPU is the watching gateway's process time (for PostgreSQL the query runs in "
        "the server's process: wall minus CPU is mostly the server's work and the round trip)."
    )
    report.write()
    return report


if __name__ == "__main__":
    main()
