"""Every task column survives a commit and a reload, whichever row a task is written with: the
narrow rows of the default path (a fresh insert, a plain update) or the whole rows of a task
that uses its rollout columns (``waiting``, ``next_attempt_at``, ``previous_attempts``).

Runs on both engines (``database`` fixture), real time with a hang guard.
"""

from __future__ import annotations

from typing import Any

import trio

from pm.job_options import AttemptView
from pm.state import TaskRecord
from pm.store import Store
from tests.stores import CREATED, DatabaseUnderTest, batch, create_job, running_store, tunnel_for

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
            record = await create_job(store, batch((["plain", "held", "retried"], "/x")))
            plain, held, retried = record.tasks
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
            changed(store, plain, held, retried)
            await store.sync()
        await assert_reloads_the_same(database.location, record.id, record.tasks)

        async with running_store(database.location) as store:
            # retried: its second attempt went out; it waits no more (NULLs overwrite).
            retried.status, retried.waiting, retried.next_attempt_at = "sent", None, None
            retried.attempts, retried.sends = 2, 2
            changed(store, retried)
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
