"""Looking at a job another gateway runs (pm/store/_job_changes.py): one store writes a job
as its owner would, a second store on the same database looks at it as another gateway's
watcher does. Both engines (``database`` fixture), real time with a hang guard."""

from __future__ import annotations

import msgspec
import trio

from pm.job_options import AbortStatus, JobOptions, RolloutStatus
from pm.rollout import AbortWatch
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


async def test_a_look_shows_the_retried_count_and_the_rollout_and_abort_figures_of_the_row(
    database: DatabaseUnderTest,
) -> None:
    """What a job actor shows live, made from the row (pm/job_wide_view.py): ``retriedCount``
    as the owner stored it, ``rollout`` after the stored ramp steps with the tasks sent, and
    each abort criterion's figures on the outcome counts."""
    options = {
        "rollout": {
            "maxInFlight": 2,
            "ramp": {"factor": 2, "afterSucceeded": 1, "maxInFlight": 8},
        },
        "abort": [
            {"on": "error", "thresholdPercent": 50, "minSettled": 2},
            {"on": "timeout", "thresholdPercent": 10},
        ],
    }
    with trio.fail_after(GUARD):
        async with (
            running_store(database.location) as owner,
            running_store(database.location) as other,
        ):
            entries = batch((["a", "b", "c", "d"], "/x"))
            job_id, first_task = await owner.allocate_ids(1, 4)
            record = make_job(job_id, first_task, entries)
            record.options = msgspec.convert(options, JobOptions)
            owner.job_created(record, entries)
            a, b, c, d = record.tasks
            for task in (a, b, c):
                record.mark_sent(task, CREATED + 1)
            # a failed once and went again: retried.
            record.retry_later(a, "error", None, CREATED + 2, CREATED + 3)
            record.mark_sent(a, CREATED + 3)
            record.settle(a, "resolved", {}, CREATED + 4, 200)
            record.settle(b, "error", {}, CREATED + 4, 500)
            record.rollout_state.ramp_steps = 1
            record.rollout_state.tripped.append(0)
            for task in record.tasks:
                owner.task_changed(task)
            owner.job_changed(record)
            await owner.sync()
            look = await other.look_at_job(record.id, (), with_tasks=False)
    assert look is not None
    view = look.view
    assert view.retried_count == 1 == record.retried_count
    assert view.rollout == RolloutStatus(
        max_in_flight=4, max_per_minute=None, ramp_steps=1, in_flight=1
    )
    assert view.abort == [
        AbortStatus(
            on="error",
            threshold_percent=50,
            min_settled=2,
            action="cancel",
            matching=1,
            settled=2,
            percent=50.0,
            tripped=True,
        ),
        AbortStatus(
            on="timeout",
            threshold_percent=10,
            min_settled=1,
            action="cancel",
            matching=0,
            settled=2,
            percent=0.0,
            tripped=False,
        ),
    ]
    # As the job actor's own watch shows them, on the same outcomes.
    assert (
        view.abort
        == AbortWatch(
            record.options.abort or [], record.rollout_state, ["resolved", "error"]
        ).status()
    )
    assert d.status == "pending"
