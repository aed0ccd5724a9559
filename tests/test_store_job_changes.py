"""Looking at a job another gateway runs (pm/store/_job_changes.py): one store writes a job
as its owner would, a second store on the same database looks at it as another gateway's
watcher does. Both engines (``database`` fixture), real time with a hang guard."""

from __future__ import annotations

import trio

from tests.stores import CREATED, DatabaseUnderTest, batch, create_job, running_store, tunnel_for

GUARD = 15.0


async def test_a_look_reads_the_job_row_and_only_the_tasks_that_can_have_changed(
    database: DatabaseUnderTest,
) -> None:
    with trio.fail_after(GUARD):
        async with (
            running_store(database.location) as owner,
            running_store(database.location) as other,
        ):
            record = await create_job(owner, batch((["a", "b", "c"], "/x")))
            a, b, c = record.tasks
            await owner.sync()

            first = await other.look_at_job(record.id, ())
            assert first is not None
            assert first.view.status == "pending" and first.view.finish_count == 0
            assert set(first.rows) == first.unsettled == {a.id, b.id, c.id}

            # The owner sends a and settles b.
            record.mark_sent(a, CREATED + 1)
            record.mark_sent(b, CREATED + 1)
            record.settle(b, "resolved", {"ok": True}, CREATED + 2, 200)
            for task in (a, b):
                owner.task_changed(task)
            owner.job_changed(record)
            await owner.sync()

            second = await other.look_at_job(record.id, first.unsettled)
            assert second is not None and second.view.finish_count == 1
            # b settled since the first look: read by id; a and c: not final.
            assert set(second.rows) == {a.id, b.id, c.id}
            assert second.unsettled == {a.id, c.id}
            changed = [row for task_id, row in second.rows.items() if first.rows[task_id] != row]
            tasks = await other.tasks_of_rows(record.id, changed, tunnel_for)
            assert [(task.id, task.status) for task in tasks] == [
                (a.id, "sent"),
                (b.id, "resolved"),
            ]
            assert tasks[1].result == {"ok": True} and tasks[1].resource == "/x"
            assert tasks[1].tunnel == tunnel_for("b")

            # A final task is never read again: the rows read shrink as the job runs.
            third = await other.look_at_job(record.id, second.unsettled)
            assert third is not None and set(third.rows) == {a.id, c.id}
            # Many ids settled since the last look are read in several statements.
            many = await other.look_at_job(record.id, range(10_000_000, 10_001_200))
            assert many is not None and set(many.rows) == {a.id, c.id}

            # A watcher of snapshots only reads the job row.
            row_only = await other.look_at_job(record.id, second.unsettled, with_tasks=False)
            assert row_only is not None and row_only.view == third.view
            assert row_only.rows == {} and row_only.unsettled == frozenset()

            owner.job_deleted(record.id)
            await owner.sync()
            assert await other.look_at_job(record.id, ()) is None
