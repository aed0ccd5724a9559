"""Database writes per task, per store engine: what one job costs the database.

For each store (a SQLite file, a ``postgresql://`` URL) the engine runs one job of
``entries`` x ``devices`` tasks with a publisher that answers every request at once (no
network: bench/store_throughput.py's engine mode), after a warm-up job, with the default
group-commit window. Counted per task, from the first submit until ``store.sync()`` after the
job ended:

- commits (transactions) and statements the store sent, and rows they wrote;
- on PostgreSQL also what the server wrote: WAL bytes (``pg_current_wal_lsn()``, the whole
  server: use a server of its own). (Each store transaction is one commit on the server.)

Usage::

    .venv/bin/python -m bench.store_writes --stores sqlite-file postgresql://user@host/db
        [--entries 1] [--devices 1000] [--commit-interval 0.05] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio

from bench.store_throughput import AnsweringPublisher, run_jobs, workload
from pm.config import Config
from pm.engine import open_engine
from pm.simulator import generate_mac_ids
from pm.store import Store, migrate
from pm.store._connection import Connection, Cursor
from pm.store._postgres_connection import PostgresConnection, connect_postgres, is_postgres_url
from pm.store._sqlite_connection import connect_sqlite


class CountingConnection:
    """A store connection that counts the statements and transactions sent through it."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.executed = 0
        self.transactions = 0

    def __getattr__(self, name: str) -> Any:
        # Everything else (the dialect's statements, fault handling) is the connection's.
        return getattr(self._connection, name)

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        self.executed += 1
        return self._connection.execute(sql, parameters)

    def transaction(self) -> AbstractContextManager[None]:
        self.transactions += 1
        return self._connection.transaction()


def open_counted(location: str, commit_interval: float) -> tuple[Store, CountingConnection]:
    connection: Connection = (
        connect_postgres(location) if is_postgres_url(location) else connect_sqlite(location)
    )
    migrate(connection)
    counting = CountingConnection(connection)
    store = Store(counting, commit_interval)  # type: ignore[arg-type]
    return store, counting


@contextmanager
def server_counters(url: str) -> Iterator[dict[str, float]]:
    """WAL bytes the server wrote during the block (PostgreSQL)."""
    figures: dict[str, float] = {}
    admin = PostgresConnection(url)

    def wal_position() -> int:
        (wal,) = admin.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
        return int(wal)

    try:
        before = wal_position()
        yield figures
        figures["wal_bytes"] = wal_position() - before
    finally:
        admin.close()


async def measure(location: str, arguments: argparse.Namespace) -> dict[str, float]:
    store, counting = open_counted(location, arguments.commit_interval)
    config = msgspec.convert(
        {
            "mqtt": {"client_id": f"pm-bench-{uuid.uuid4().hex[:8]}"},
            "tasks": {"default_timeout": 60.0},
        },
        Config,
    )
    devices = generate_mac_ids(arguments.devices)
    publisher = AnsweringPublisher()
    figures: dict[str, float] = {}
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            async with open_engine(config, publisher, store) as engine:
                publisher.engine = engine
                await run_jobs(engine, workload(devices, 1), 1)  # warm-up
                before = (counting.transactions, counting.executed, store.rows_written)
                server = server_counters(location) if is_postgres_url(location) else _nothing()
                with server as server_figures:
                    ended, durable = await run_jobs(engine, workload(devices, arguments.entries), 1)
                figures.update(server_figures)
                tasks = arguments.entries * arguments.devices
                figures["commits"] = counting.transactions - before[0]
                figures["statements"] = counting.executed - before[1]
                figures["rows"] = store.rows_written - before[2]
                figures["tasks_per_second"] = tasks / durable
                figures = {
                    key: value if key == "tasks_per_second" else value / tasks
                    for key, value in figures.items()
                }
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    return figures


@contextmanager
def _nothing() -> Iterator[dict[str, float]]:
    yield {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stores",
        nargs="+",
        default=["sqlite-file"],
        help="sqlite-file (a new file per round) and/or postgresql:// URLs of databases of a"
        " server of their own (EMPTIED each round: DROP SCHEMA public CASCADE)",
    )
    parser.add_argument("--entries", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--commit-interval", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args(argv)
    print("command:", shlex.join(["python", "-m", "bench.store_writes", *sys.argv[1:]]))
    tasks = arguments.entries * arguments.devices
    print(f"one job of {tasks:,} tasks, commit_interval={arguments.commit_interval}s; per task:")
    keys = ["commits", "statements", "rows", "wal_bytes", "tasks_per_second"]
    print(f"{'store':<12}" + "".join(f"{key:>17}" for key in keys))
    with tempfile.TemporaryDirectory() as directory:
        for store in arguments.stores:
            rounds: list[dict[str, float]] = []
            for round_number in range(arguments.rounds):
                if store == "sqlite-file":
                    location = str(Path(directory) / f"{round_number}.db")
                else:
                    location = store
                    _empty(location)
                rounds.append(trio.run(measure, location, arguments))
            label = "sqlite-file" if store == "sqlite-file" else "postgresql"
            print(
                f"{label:<12}"
                + "".join(
                    f"{statistics.median(r[key] for r in rounds):>17.4g}"
                    if key in rounds[0]
                    else f"{'-':>17}"
                    for key in keys
                )
            )
    print("medians of", arguments.rounds, "rounds; tasks_per_second until store.sync() returned")


def _empty(url: str) -> None:
    """Empty the database (everything in its public schema): each round starts afresh."""
    connection = PostgresConnection(url)
    try:
        with connection.transaction():
            connection.execute("DROP SCHEMA public CASCADE")
            connection.execute("CREATE SCHEMA public")
    finally:
        connection.close()


if __name__ == "__main__":
    main()
