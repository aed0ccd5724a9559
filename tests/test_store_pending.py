"""What a failed commit gives back (pure logic, no database): the changes of the failed
window return under the ones recorded since, nothing lost and nothing going backwards."""

from __future__ import annotations

import json

from pm.store._pending import PendingChanges
from pm.store._sqlite_connection import STATEMENTS
from tests.stores import batch, make_job

_STATEMENT_NAMES = {
    sql: name
    for name, value in STATEMENTS._asdict().items()
    for sql in (value if isinstance(value, tuple) else (value,))
}


def rows(pending: PendingChanges) -> dict[str, list[list[object]]]:
    """The rows each statement would write, by the statement's name in ``WriteStatements``."""
    statements, _ = pending.statements(STATEMENTS)
    return {_STATEMENT_NAMES.get(sql, sql): json.loads(rows_json) for sql, rows_json in statements}


def test_a_failed_window_comes_back_whole() -> None:
    record = make_job(1, 1, batch((["a", "b"], "/x")))
    failed = PendingChanges()
    failed.job_created(record, batch((["a", "b"], "/x")))
    current = PendingChanges()
    current.give_back(failed)
    assert rows(current) == rows(failed)


def test_the_newest_state_of_a_record_wins() -> None:
    record = make_job(1, 1, batch(("a", "/x")))
    task = record.tasks[0]
    failed = PendingChanges()
    record.settle(task, "resolved", {"v": 1}, 1.0)
    failed.task_changed(task)
    failed.job_changed(record)
    current = PendingChanges()
    task.result = {"v": 2}  # changed again after the failed commit took it
    current.task_changed(task)
    current.give_back(failed)
    (task_row,) = rows(current)["update_plain_tasks"]
    assert task_row[3] == '{"v":2}'
    assert list(current.tasks) == [task.id] and list(current.jobs) == [record.id]


def test_a_job_deleted_while_its_creation_was_failing_is_never_written() -> None:
    record = make_job(7, 1, batch(("a", "/x")))
    failed = PendingChanges()
    failed.job_created(record, batch(("a", "/x")))
    current = PendingChanges()
    current.job_deleted(7)  # not pending here: recorded as a delete of a stored job
    current.give_back(failed)
    assert current.created == {} and current.deleted == set()
    assert rows(current) == {}


def test_deletes_of_the_failed_window_are_kept_and_its_updates_dropped_for_them() -> None:
    record = make_job(3, 1, batch(("a", "/x")))
    failed = PendingChanges()
    failed.job_deleted(9)
    failed.job_changed(record)
    current = PendingChanges()
    current.job_deleted(3)
    current.give_back(failed)
    assert current.deleted == {3, 9}
    assert current.jobs == {}
