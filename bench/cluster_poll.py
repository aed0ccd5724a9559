"""What a clustered gateway's poll for jobs costs, with and without the job-wide control it
now carries (``pm/shard_control.py``): the read of the unfinished jobs' ids alone (the poll
before job-wide control) against the read of their ids and control columns, and the check
of abort criteria and schedule ends on that read, for ``--jobs`` unfinished jobs in the
database (each of 10 tasks; none with options, the usual case).

A gateway polls every ``store.commit_interval`` (20 times a second at the default 0.05 s).
Figures are medians over ``--rounds`` of the mean over ``--polls`` polls.

Usage (a migrated PostgreSQL database that may be filled and emptied)::

    .venv/bin/python -m bench.cluster_poll --url postgresql://postgres@127.0.0.1:PORT/pm \
        [--jobs 10 100 1000] [--rounds 5] [--polls 200]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

from bench._report import Report, median
from bench.store_commit import CREATED, _commit
from pm.schemas import BatchEntry
from pm.shard_control import JobWideControl, read_unfinished
from pm.state import JobRecord, expand_batch
from pm.store import migrate
from pm.store._connection import Connection
from pm.store._pending import PendingChanges
from pm.store._postgres_connection import connect_postgres
from pm.store._shard_tasks import UNFINISHED_STATUSES

# The poll's read before job-wide control: the ids only.
IDS_ONLY = f"SELECT id FROM jobs WHERE status IN ({', '.join('?' * len(UNFINISHED_STATUSES))})"


def _fill(connection: Connection, first: int, last: int) -> None:
    """Store jobs ``first`` .. ``last`` - 1, each of 10 pending tasks, in one transaction."""
    pending = PendingChanges()
    for job_id in range(first, last):
        entries = [
            BatchEntry(method="get", resource="/r", destination=[f"d{n}" for n in range(10)])
        ]
        tasks = expand_batch(
            job_id,
            entries,
            next_task_id=iter(range(job_id * 100, job_id * 100 + 10)).__next__,
            tunnel_for=lambda device: f"/remote/{device}/response/bench",
            default_timeout=30.0,
            now=CREATED,
        )
        pending.job_created(JobRecord(job_id, tasks, None, CREATED), entries)
    _commit(connection, pending)


def _per_poll(poll: Callable[[], Any], polls: int) -> tuple[float, float]:
    """Mean wall and CPU seconds of one ``poll``."""
    poll()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(polls):
        poll()
    return (time.perf_counter() - wall) / polls, (time.process_time() - cpu) / polls


def measure(connection: Connection, polls: int) -> dict[str, tuple[float, float]]:
    control = JobWideControl()
    polled = read_unfinished(connection)
    return {
        "ids only (before)": _per_poll(
            lambda: connection.execute(IDS_ONLY, UNFINISHED_STATUSES).fetchall(), polls
        ),
        "ids and control (now)": _per_poll(lambda: read_unfinished(connection), polls),
        "abort and schedule check": _per_poll(
            lambda: control.check(connection, polled, time.time()), polls
        ),
    }


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="a PostgreSQL database to fill")
    parser.add_argument("--jobs", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--polls", type=int, default=200)
    parser.add_argument("--scenario", default="cluster_poll", help="result file name")
    args = parser.parse_args(argv)
    report = Report(
        scenario=args.scenario,
        title="A clustered gateway's poll for jobs, per poll (medians)",
        command="python -m bench.cluster_poll "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=["unfinished jobs", "step", "wall µs", "gateway CPU µs"],
    )
    connection = connect_postgres(args.url)
    try:
        migrate(connection)
        connection.execute("DELETE FROM jobs")
        stored = 0
        for jobs in sorted(args.jobs):
            _fill(connection, stored + 1, jobs + 1)
            stored = jobs
            runs = [measure(connection, args.polls) for _ in range(args.rounds)]
            report.raw[str(jobs)] = runs
            for step in runs[0]:
                wall = median([run[step][0] for run in runs]) * 1e6
                cpu = median([run[step][1] for run in runs]) * 1e6
                report.rows.append([jobs, step, wall, cpu])
        connection.execute("DELETE FROM jobs")
    finally:
        connection.close()
    report.notes.append(
        "Gateway CPU is the polling process's time; the query itself runs in the server."
    )
    report.write()
    return report


if __name__ == "__main__":
    main()
