"""The store's write statements: the columns of each kind of row, in the order the row
builders of :mod:`pm.store._rows` fill them, and the SQL each engine runs them with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

# The column types the schema uses (pm/store/_schema.py); each engine reads a value of a JSON
# row as one of them (``RowsFrom``).
INTEGER, REAL, TEXT = "INTEGER", "REAL", "TEXT"

RowsFrom = Callable[[Sequence[str]], str]
"""An engine's ``SELECT <one column per type> FROM <the JSON array of rows bound to ?>``."""


class WriteStatements(NamedTuple):
    """The SQL of a commit, each statement taking ``?`` = a JSON array of rows (see
    :meth:`PendingChanges.statements <pm.store._pending.PendingChanges.statements>`)."""

    insert_jobs: str
    insert_entries: str
    insert_tasks: str
    # A fresh task (every column after the first release's at its default) and a task that
    # never used its rollout columns: see the narrow rows below.
    insert_fresh_tasks: str
    update_jobs: str
    update_tasks: str
    update_plain_tasks: str
    upsert_devices: str
    # tasks, entries, then the jobs themselves.
    delete_jobs: tuple[str, ...]


# (column, type) of each kind of row, in the order the row builders below fill them.
_JOB_ROW = (
    ("id", INTEGER), ("created_at", REAL), ("finish_at", REAL), ("timeout", REAL),
    ("status", TEXT), ("total_count", INTEGER), ("finish_count", INTEGER),
    ("error_count", INTEGER), ("progress", INTEGER), ("pending_count", INTEGER),
    ("sent_count", INTEGER), ("expired_count", INTEGER), ("options", TEXT), ("holds", TEXT),
    ("ending", TEXT), ("rollout_state", TEXT), ("outcomes", TEXT), ("outcome", TEXT),
    ("eta", REAL), ("retried_count", INTEGER),
)  # fmt: skip
_ENTRY_ROW = (
    ("job_id", INTEGER), ("position", INTEGER), ("method", TEXT), ("resource", TEXT),
    ("data", TEXT),
)  # fmt: skip
_TASK_ROW = (
    ("id", INTEGER), ("job_id", INTEGER), ("entry", INTEGER), ("device", TEXT),
    ("timeout", REAL), ("status", TEXT), ("progress", INTEGER), ("result", TEXT),
    ("finish_at", REAL), ("expires_at", REAL), ("sends", INTEGER), ("sent_at", REAL),
    ("waiting", TEXT), ("attempts", INTEGER), ("next_attempt_at", REAL),
    ("previous_attempts", TEXT), ("code", INTEGER),
)  # fmt: skip
_JOB_UPDATE = (
    ("id", INTEGER), ("finish_at", REAL), ("status", TEXT), ("finish_count", INTEGER),
    ("error_count", INTEGER), ("progress", INTEGER), ("pending_count", INTEGER),
    ("sent_count", INTEGER), ("expired_count", INTEGER), ("holds", TEXT), ("ending", TEXT),
    ("rollout_state", TEXT), ("outcomes", TEXT), ("outcome", TEXT), ("eta", REAL),
    ("retried_count", INTEGER),
)  # fmt: skip
_TASK_UPDATE = (
    ("id", INTEGER), ("status", TEXT), ("progress", INTEGER), ("result", TEXT),
    ("finish_at", REAL), ("sends", INTEGER), ("sent_at", REAL), ("waiting", TEXT),
    ("attempts", INTEGER), ("next_attempt_at", REAL), ("previous_attempts", TEXT),
    ("code", INTEGER),
)  # fmt: skip
# The narrow rows of the default path (a job without rollout fields). Reading a JSON row
# costs SQLite more than its width: the commits of a 10,000-task job took 17.2 µs a task
# with every row whole and 11.9 with these (`python -m bench.store_commit`; docs/scale-out.md,
# "Database writes per task"). A column a narrow row leaves out keeps what the table holds:
# its default for a fresh task, NULL for a task that never stored its rollout columns;
# pm.store._rows decides which row each task takes.
# A fresh task is pending, so its status and progress are constants (result and finish_at
# NULL): 6 JSON columns a row instead of 10, ~1 µs a task less on SQLite (3.1 -> 2.0 µs a row
# inserting 10,000, measured with a table and indexes like ours).
_TASK_FRESH_ROW = tuple(
    column
    for column in _TASK_ROW[:10]
    if column[0] not in ("status", "progress", "result", "finish_at")
)
_FRESH_CONSTANTS = (("status", "'pending'"), ("progress", "0"))
ROLLOUT_TASK_COLUMNS = ("waiting", "next_attempt_at", "previous_attempts")
_TASK_PLAIN_UPDATE = tuple(
    column for column in _TASK_UPDATE if column[0] not in ROLLOUT_TASK_COLUMNS
)
_DEVICE_ROW = (
    ("id", TEXT), ("presence", TEXT), ("last_seen", REAL), ("connected_at", REAL),
    ("disconnected_at", REAL),
)  # fmt: skip


def _names(row: Sequence[tuple[str, str]]) -> str:
    return ", ".join(name for name, _ in row)


def _types(row: Sequence[tuple[str, str]]) -> list[str]:
    return [column_type for _, column_type in row]


def _insert(table: str, row: Sequence[tuple[str, str]], rows_from: RowsFrom) -> str:
    return f"INSERT INTO {table} ({_names(row)}) {rows_from(_types(row))}"


def _insert_with_constants(
    table: str,
    row: Sequence[tuple[str, str]],
    constants: Sequence[tuple[str, str]],
    rows_from: RowsFrom,
) -> str:
    """An insert of ``row`` from JSON and of ``constants`` (column, SQL literal) for every row;
    both engines flatten the subquery."""
    names = _names([*row, *constants])
    literals = ", ".join(literal for _, literal in constants)
    return (
        f"INSERT INTO {table} ({names}) SELECT r.*, {literals} FROM ({rows_from(_types(row))}) AS r"
    )


def _update(table: str, row: Sequence[tuple[str, str]], rows_from: RowsFrom) -> str:
    # Joined through a CTE of plain columns so the engine looks each row up by primary key.
    assignments = ", ".join(f"{name} = u.{name}" for name, _ in row[1:])
    return (
        f"WITH u ({_names(row)}) AS ({rows_from(_types(row))})"
        f" UPDATE {table} SET {assignments} FROM u WHERE {table}.id = u.id"
    )


def write_statements(rows_from: RowsFrom) -> WriteStatements:
    """The commit's SQL for one engine: ``rows_from`` reads the JSON rows."""
    device_updates = ", ".join(f"{name} = excluded.{name}" for name, _ in _DEVICE_ROW[1:])
    return WriteStatements(
        insert_jobs=_insert("jobs", _JOB_ROW, rows_from),
        insert_entries=_insert("entries", _ENTRY_ROW, rows_from),
        insert_tasks=_insert("tasks", _TASK_ROW, rows_from),
        insert_fresh_tasks=_insert_with_constants(
            "tasks", _TASK_FRESH_ROW, _FRESH_CONSTANTS, rows_from
        ),
        update_jobs=_update("jobs", _JOB_UPDATE, rows_from),
        update_tasks=_update("tasks", _TASK_UPDATE, rows_from),
        update_plain_tasks=_update("tasks", _TASK_PLAIN_UPDATE, rows_from),
        # "WHERE true": SQLite needs it to parse ON CONFLICT after INSERT ... SELECT.
        upsert_devices=_insert("devices", _DEVICE_ROW, rows_from)
        + f" WHERE true ON CONFLICT (id) DO UPDATE SET {device_updates}",
        delete_jobs=tuple(
            f"DELETE FROM {table} WHERE {column} IN ({rows_from([INTEGER])})"
            for table, column in (("tasks", "job_id"), ("entries", "job_id"), ("jobs", "id"))
        ),
    )


def insert_statement(
    table: str,
    row: Sequence[tuple[str, str]],
    rows_from: RowsFrom,
    constants: Sequence[tuple[str, str]] = (),
) -> str:
    """``INSERT`` of JSON rows of ``row``'s columns, and of ``constants`` (column, SQL literal)
    if any (a clustered gateway's task rows)."""
    if constants:
        return _insert_with_constants(table, row, constants, rows_from)
    return _insert(table, row, rows_from)


# The columns of the task rows, for the cluster's writes (pm/cluster/_writes.py), which add
# the shard (inserts) or the shard and epoch (fenced updates) after them.
TASK_ROW = _TASK_ROW
TASK_FRESH_ROW = _TASK_FRESH_ROW
FRESH_CONSTANTS = _FRESH_CONSTANTS
TASK_UPDATE = _TASK_UPDATE
TASK_PLAIN_UPDATE = _TASK_PLAIN_UPDATE

DEVICE_COLUMNS = _names(_DEVICE_ROW)

JOB_COLUMNS = _names(_JOB_ROW)
