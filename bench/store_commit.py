"""CPU time of the store's commits for one job, by kind of write: what the event loop pays.

With the in-memory store (the default) a commit runs on the trio thread: building its rows
and SQLite executing them are CPU the gateway spends per task. This measures both, without a
network or a gateway, for one job of ``--tasks`` tasks on a ``:memory:`` SQLite, in three
commits as a real job writes them: the job created (its tasks inserted), every task sent,
every task resolved (answer code 200). Each row of the table is a median over ``--rounds``.

Two shapes of task: ``default`` (a job without rollout fields: the narrow rows of
``pm/store/_statements.py``) and ``rollout`` (every task has a waiting reason, so every row
carries every column, as every task's did before the narrow rows). CPU time
(``time.process_time``), so the figures barely move with the machine's load.

Usage::

    .venv/bin/python -m bench.store_commit [--tasks 10000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from bench._report import Report, median
from pm.schemas import BatchEntry
from pm.state import JobRecord, expand_batch
from pm.store import migrate
from pm.store._connection import Connection
from pm.store._pending import PendingChanges
from pm.store._sqlite_connection import connect_sqlite

CREATED = 1_700_000_000.0
STAGES = ("insert", "sent", "resolved")


def _job(tasks: int) -> tuple[JobRecord, list[BatchEntry]]:
    entries = [
        BatchEntry(
            method="get",
            resource="/system/status",
            destination=[f"device-{n:06d}" for n in range(tasks)],
            data={},
        )
    ]
    task_ids = iter(range(1, tasks + 1))
    records = expand_batch(
        1,
        entries,
        next_task_id=task_ids.__next__,
        tunnel_for=lambda device: f"/remote/{device}/response",
        default_timeout=30.0,
        now=CREATED,
    )
    return JobRecord(1, records, None, CREATED), entries


def _commit(connection: Connection, pending: PendingChanges) -> float:
    """CPU seconds to build the rows of ``pending`` and write them in one transaction."""
    start = time.process_time()
    statements, _ = pending.statements(connection.statements)
    with connection.transaction():
        for sql, rows in statements:
            connection.execute(sql, (rows,))
    return time.process_time() - start


def measure(tasks: int, shape: str) -> dict[str, float]:
    """CPU seconds of each commit of one job of ``tasks`` tasks of ``shape``."""
    connection = connect_sqlite(":memory:")
    try:
        migrate(connection)
        record, entries = _job(tasks)
        if shape == "rollout":
            for task in record.tasks:
                record.mark_waiting(task, "rollout-window")
        seconds = {}
        created = PendingChanges()
        created.job_created(record, entries)
        seconds["insert"] = _commit(connection, created)
        sent = PendingChanges()
        for task in record.tasks:
            record.mark_sent(task, CREATED + 1)
            sent.task_changed(task)
        sent.job_changed(record)
        seconds["sent"] = _commit(connection, sent)
        resolved = PendingChanges()
        for task in record.tasks:
            record.settle(task, "resolved", {"ok": True}, CREATED + 2, 200)
            resolved.task_changed(task)
        resolved.job_changed(record)
        seconds["resolved"] = _commit(connection, resolved)
        return seconds
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scenario", default="store_commit", help="result file name")
    args = parser.parse_args(argv)
    report = Report(
        scenario=args.scenario,
        title="Store commits on the event loop: CPU per task (in-memory SQLite, medians)",
        command="python -m bench.store_commit "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=["tasks", "shape", *(f"{stage} µs/task" for stage in STAGES), "total µs/task"],
    )
    for shape in ("default", "rollout"):
        runs = [measure(args.tasks, shape) for _ in range(args.rounds)]
        per_task = {
            stage: median([run[stage] for run in runs]) * 1e6 / args.tasks for stage in STAGES
        }
        report.raw[shape] = runs
        report.rows.append(
            [args.tasks, shape, *(per_task[stage] for stage in STAGES), sum(per_task.values())]
        )
    report.notes.append(
        "CPU time of building the rows and executing the statements of each commit; one "
        "commit per stage (a real job spreads them over many group-commit windows)."
    )
    report.write()
    return report


if __name__ == "__main__":
    main()
