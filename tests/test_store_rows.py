"""Every task column survives a commit and a reload, whichever row a task is written with: the
narrow rows of the default path (a fresh insert, a plain update) or the whole rows of a task
that uses its rollout columns (``waiting``, ``next_attempt_at``, ``previous_attempts``), also
after a commit that failed and whatever changes together.

Runs on both engines (``database`` fixture), real time with a hang guard; the failed commit
on a real in-memory SQLite, through the same give-back as the store's.
"""

from __future__ import annotations

from typing import Any

import trio

from pm.job_options import AttemptView
from pm.state import TaskRecord
from pm.store import Store, migrate
from pm.store._connection import Connection
from pm.store._jobs import load_job
from pm.store._pending import PendingChanges
from pm.store._sqlite_connection import connect_sqlite
from tests.stores import (
    CREATED,
    DatabaseUnderTest,
    batch,
    create_job,
    make_job,
    running_store,
    tunnel_for,
)

GUARD = 15.0


def columns(task: TaskRecord) -> dict[str, Any]:
    """Everything the tasks table keeps of a task."""
    return {
        name: getattr(task, name)
        for name in (
            "id", "job_id", "entry", "device", "timeout", "status", "progress", "result",
            "finish_at", "expires_at", "sends", "sent_at", "waiting", "attempts",
            "next_attempt_at", "previous_attempts", "code",
        )
    }  # fmt: skip


async def assert_reloads_the_same(location: str, job_id: int, tasks: list[TaskRecord]) -> None:
    async with running_store(location) as reopened:
        loaded = await reopened.load_job(job_id, tunnel_for)
    assert loaded is not None
    assert [columns(task) for task in loaded.tasks] == [columns(task) for task in tasks]


def changed(store: Store, *tasks: TaskRecord) -> None:
    for task in tasks:
        store.task_changed(task)


async def test_every_task_column_round_trips_through_narrow_and_whole_rows(
    database: DatabaseUnderTest,
) -> None:
    with trio.fail_after(GUARD):
        async with running_store(database.location) as store:
            record = await create_job(
                store, batch((["plain", "held", "retried", "two-step"], "/x"))
            )
            plain, held, retried, two_step = record.tasks
            # Inserted fresh (plain, retried) and whole (held: it waits already).
            plain.expires_at, held.waiting = CREATED + 60, "device-offline"
            await store.sync()
        await assert_reloads_the_same(database.location, record.id, record.tasks)

        async with running_store(database.location) as store:
            # plain: sent and answered, a plain update; held: its reason cleared, which must
            # overwrite the stored one; retried: its first attempt failed, waiting to retry.
            plain.status, plain.sends, plain.sent_at, plain.attempts = "sent", 1, CREATED + 1, 1
            plain.status, plain.progress, plain.result = "resolved", 100, {"ok": [1, "two"]}
            plain.finish_at, plain.code = CREATED + 2, 200
            held.waiting, held.status, held.sends, held.sent_at = None, "sent", 2, CREATED + 3
            held.attempts = 1
            retried.status, retried.waiting, retried.attempts = "pending", "retry-backoff", 1
            retried.sends, retried.sent_at, retried.next_attempt_at = 1, CREATED + 1, CREATED + 9
            retried.previous_attempts = [
                AttemptView(attempt=1, request_id=retried.id, status="error", result={"c": 5})
            ]
            # two_step: sent, then answered in a commit of its own.
            two_step.status, two_step.sends, two_step.sent_at = "sent", 1, CREATED + 4
            two_step.attempts = 1
            changed(store, plain, held, retried, two_step)
            await store.sync()
        await assert_reloads_the_same(database.location, record.id, record.tasks)

        async with running_store(database.location) as store:
            # retried: its second attempt went out; it waits no more (NULLs overwrite).
            retried.status, retried.waiting, retried.next_attempt_at = "sent", None, None
            retried.attempts, retried.sends = 2, 2
            # two_step: answered.
            two_step.status, two_step.progress, two_step.result = "error", 100, {"code": 500}
            two_step.finish_at, two_step.code = CREATED + 5, 500
            changed(store, retried, two_step)
            await store.sync()
        await assert_reloads_the_same(database.location, record.id, record.tasks)


async def test_a_task_reloaded_with_rollout_columns_overwrites_them_when_they_clear(
    database: DatabaseUnderTest,
) -> None:
    """After a restart the task record is new: it must know the table holds its reason."""
    with trio.fail_after(GUARD):
        async with running_store(database.location) as store:
            record = await create_job(store, batch(("held", "/x")))
            record.tasks[0].waiting = "rollout-rate"
            await store.sync()
        async with running_store(database.location) as store:
            loaded = await store.load_job(record.id, tunnel_for)
            assert loaded is not None
            (task,) = loaded.tasks
            task.waiting, task.status, task.sends, task.attempts = None, "sent", 1, 1
            store.task_changed(task)
            await store.sync()
        await assert_reloads_the_same(database.location, record.id, [task])


def commit_in(connection: Connection, pending: PendingChanges) -> None:
    """One commit, as the store makes it."""
    statements, _ = pending.statements(connection.statements)
    with connection.transaction():
        for sql, rows in statements:
            connection.execute(sql, (rows,))


def stored_columns(connection: Connection, task: TaskRecord) -> dict[str, Any]:
    loaded = load_job(connection, job_id=task.job_id, tunnel_for=tunnel_for)
    assert loaded is not None
    (stored,) = (t for t in loaded.tasks if t.id == task.id)
    return columns(stored)


def a_stored_job(connection: Connection) -> TaskRecord:
    migrate(connection)
    entries = batch(("a", "/x"))
    record = make_job(1, 1, entries)
    created = PendingChanges()
    created.job_created(record, entries)
    commit_in(connection, created)
    return record.tasks[0]


def test_a_task_whose_commit_failed_is_written_again_with_what_that_commit_carried() -> None:
    """A commit that failed: the task's next row must still carry what it did not store."""
    connection = connect_sqlite(":memory:")
    task = a_stored_job(connection)
    failed = PendingChanges()
    task.status, task.sends, task.sent_at, task.attempts = "sent", 1, CREATED + 1, 1
    failed.task_changed(task)
    failed.statements(connection.statements)  # built; its commit fails: nothing is written
    current = PendingChanges()
    task.status, task.progress, task.finish_at, task.code = "resolved", 100, CREATED + 2, 200
    current.task_changed(task)
    current.give_back(failed)
    commit_in(connection, current)
    assert stored_columns(connection, task) == columns(task)


# Each column of a task without rollout columns changed alone and back, then some together,
# one commit each.
CHANGES: list[dict[str, Any]] = [
    {"status": "sent"}, {"sends": 1}, {"sent_at": CREATED + 1}, {"attempts": 1},
    {"progress": 40}, {"result": {"step": 1}}, {"progress": 0}, {"result": None},
    {"sent_at": CREATED + 3}, {"sends": 2}, {"attempts": 0}, {"sends": 0}, {"sent_at": None},
    {"code": 206}, {"finish_at": CREATED + 4}, {"code": None}, {"finish_at": None},
    {"progress": 50}, {"progress": 0, "sends": 3}, {"result": [1]}, {"result": None, "sends": 4},
    {"status": "resolved", "code": 200},
]  # fmt: skip


def test_any_column_changed_is_stored_even_one_the_narrow_rows_leave_out() -> None:
    connection = connect_sqlite(":memory:")
    task = a_stored_job(connection)
    for change in CHANGES:
        for name, value in change.items():
            setattr(task, name, value)
        pending = PendingChanges()
        pending.task_changed(task)
        commit_in(connection, pending)
        assert stored_columns(connection, task) == columns(task), change


def test_a_task_read_back_from_the_database_knows_what_the_table_holds() -> None:
    connection = connect_sqlite(":memory:")
    task = a_stored_job(connection)
    task.status, task.sends, task.sent_at, task.attempts, task.progress = "sent", 1, 5.0, 1, 40
    pending = PendingChanges()
    pending.task_changed(task)
    commit_in(connection, pending)
    loaded = load_job(connection, job_id=task.job_id, tunnel_for=tunnel_for)
    assert loaded is not None
    (restarted,) = loaded.tasks
    # Back to the defaults, as no real transition does: the rows must still say so.
    restarted.status, restarted.sends, restarted.sent_at, restarted.attempts = "pending", 0, None, 0
    restarted.progress = 0
    pending = PendingChanges()
    pending.task_changed(restarted)
    commit_in(connection, pending)
    assert stored_columns(connection, restarted) == columns(restarted)


def test_a_task_inserted_whole_overwrites_its_rollout_columns_when_they_clear() -> None:
    """Inserted already sent and with a reason (as no real transition makes it): the reason
    is in the table, so clearing it must write its NULL."""
    connection = connect_sqlite(":memory:")
    migrate(connection)
    entries = batch(("a", "/x"))
    record = make_job(1, 1, entries)
    (task,) = record.tasks
    task.status, task.sends, task.sent_at, task.attempts = "sent", 1, CREATED + 1, 1
    task.waiting = "device-busy"
    created = PendingChanges()
    created.job_created(record, entries)
    commit_in(connection, created)
    task.waiting = None
    pending = PendingChanges()
    pending.task_changed(task)
    commit_in(connection, pending)
    assert stored_columns(connection, task) == columns(task)


def test_a_task_inserted_fresh_with_an_answer_overwrites_it_when_it_clears() -> None:
    """Inserted fresh but with answer columns (ended before its job's first commit), then
    cleared as a send changes (as no real transition does): the table must follow."""
    connection = connect_sqlite(":memory:")
    migrate(connection)
    entries = batch(("a", "/x"))
    record = make_job(1, 1, entries)
    (task,) = record.tasks
    task.progress, task.result, task.finish_at = 100, {"gone": True}, CREATED + 1
    created = PendingChanges()
    created.job_created(record, entries)
    commit_in(connection, created)
    task.progress, task.result, task.finish_at, task.sends = 0, None, None, 1
    pending = PendingChanges()
    pending.task_changed(task)
    commit_in(connection, pending)
    assert stored_columns(connection, task) == columns(task)
