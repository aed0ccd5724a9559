"""Job and task state as plain objects: transitions, counts, progress and views."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest

from pm.schemas import BatchEntry, TaskView
from pm.state import JobRecord, TaskRecord, expand_batch, iso_timestamp

CREATED = 1_324_308_526.493  # 2011-12-19T15:28:46.493Z


def batch_entry(devices: str | list[str], resource: str = "/r", **extra: Any) -> BatchEntry:
    return msgspec.convert(
        {"method": "GET", "resource": resource, "__destination": devices, **extra}, BatchEntry
    )


def make_job(devices: int = 3, timeout: float | None = None) -> JobRecord:
    ids = itertools.count(100)
    tasks = expand_batch(
        1,
        [batch_entry([f"d{n}" for n in range(devices)])],
        next_task_id=ids.__next__,
        tunnel_for=lambda device: f"/remote/{device}/response",
        default_timeout=30.0,
        now=CREATED,
    )
    return JobRecord(1, tasks, timeout, CREATED)


def assert_invariants(job: JobRecord) -> None:
    final = [task for task in job.tasks if task.final]
    assert job.done_count == job.finish_count + job.error_count == len(final)
    assert job.finish_count == sum(task.status == "resolved" for task in job.tasks)
    assert job.progress == sum(task.progress for task in job.tasks) // len(job.tasks)
    assert all(task.progress == 100 for task in final)
    assert job.final == (job.finish_at is not None)
    statuses = [task.status for task in job.tasks]
    assert (job.pending_count, job.sent_count, job.expired_count) == (
        statuses.count("pending"),
        statuses.count("sent"),
        statuses.count("expired"),
    )
    assert all(task.waiting is None for task in job.tasks if task.status != "pending")


# -- timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        (CREATED, "2011-12-19T15:28:46.493Z"),
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1_324_308_526.0, "2011-12-19T15:28:46.000Z"),
        (1_324_308_526.9999, "2011-12-19T15:28:46.999Z"),  # truncated, never rounded up
        (1_700_000_000.05, "2023-11-14T22:13:20.050Z"),
    ],
)
def test_iso_timestamp(epoch: float, text: str) -> None:
    assert iso_timestamp(epoch) == text


# -- expansion -----------------------------------------------------------------------------


def test_expand_batch_is_entry_order_then_destination_order() -> None:
    ids = itertools.count(1)
    shared_data = {"x": 1}
    tasks = expand_batch(
        7,
        [
            batch_entry(["b", "a"], "/one", data=shared_data),
            batch_entry("000C291CE801", "/two", timeout=5),
            batch_entry(["c"], "/three"),
        ],
        next_task_id=ids.__next__,
        tunnel_for=lambda device: f"/t/{device}",
        default_timeout=30.0,
        now=CREATED,
    )
    assert [(t.id, t.entry, t.device, t.resource, t.timeout) for t in tasks] == [
        (1, 0, "b", "/one", 30.0),
        (2, 0, "a", "/one", 30.0),
        (3, 1, "00:0c:29:1c:e8:01", "/two", 5.0),
        (4, 2, "c", "/three", 30.0),
    ]
    assert {t.job_id for t in tasks} == {7}
    assert {t.method for t in tasks} == {"get"}
    assert [t.tunnel for t in tasks[:3]] == ["/t/b", "/t/a", "/t/00:0c:29:1c:e8:01"]
    assert tasks[0].data == {"x": 1} and tasks[0].data is tasks[1].data
    assert tasks[3].data == {}
    assert all(t.created_at == CREATED and t.status == "pending" for t in tasks)
    assert all(t.progress == 0 and t.result is None and t.finish_at is None for t in tasks)


def test_a_job_needs_at_least_one_task() -> None:
    with pytest.raises(ValueError, match="at least one task"):
        JobRecord(1, [], None, CREATED)


# -- transitions ---------------------------------------------------------------------------


def test_mark_sent_moves_a_pending_task_once_and_starts_dispatching() -> None:
    job = make_job()
    first, second, _ = job.tasks
    assert job.status == "pending"
    assert job.mark_sent(first, 1.0) is True
    assert (first.status, job.status) == ("sent", "dispatching")
    assert job.mark_sent(first, 1.0) is False
    assert job.mark_sent(second, 1.0) is True
    assert job.status == "dispatching"
    job.settle(second, "resolved", None, CREATED + 1)
    assert job.mark_sent(second, 1.0) is False
    assert second.status == "resolved"


def test_mark_progress_only_forward_only_when_sent_and_below_100() -> None:
    job = make_job(devices=2)
    task = job.tasks[0]
    assert job.mark_progress(task, 10) is False  # still pending
    job.mark_sent(task, 1.0)
    assert job.mark_progress(task, 10) is True
    assert job.mark_progress(task, 10) is False
    assert job.mark_progress(task, 5) is False
    assert task.progress == 10
    assert job.mark_progress(task, 100) is True
    assert task.progress == 99 and task.status == "sent"
    assert job.mark_progress(task, 150) is False
    assert job.progress == 49  # floor((99 + 0) / 2)
    assert_invariants(job)


def test_settle_happens_once_and_a_second_settle_changes_nothing() -> None:
    job = make_job()
    task = job.tasks[0]
    job.mark_sent(task, 1.0)
    job.mark_progress(task, 40)
    assert job.settle(task, "resolved", {"ok": 1}, CREATED + 2) is True
    assert (task.status, task.result, task.finish_at, task.progress) == (
        "resolved",
        {"ok": 1},
        CREATED + 2,
        100,
    )
    counts = (job.finish_count, job.error_count, job.done_count, job.progress)
    assert job.settle(task, "error", {"code": 500}, CREATED + 3) is False
    assert (task.status, task.result, task.finish_at) == ("resolved", {"ok": 1}, CREATED + 2)
    assert (job.finish_count, job.error_count, job.done_count, job.progress) == counts
    assert job.mark_progress(task, 50) is False
    assert_invariants(job)


def test_settle_refuses_a_non_final_status() -> None:
    job = make_job()
    for status in ("pending", "sent", "dispatching"):
        with pytest.raises(ValueError, match="not a final task status"):
            job.settle(job.tasks[0], status, None, CREATED)  # type: ignore[arg-type]
    assert job.tasks[0].status == "pending"


def test_counts_and_progress_as_tasks_settle_and_the_job_resolves_on_the_last() -> None:
    job = make_job(devices=3)
    a, b, c = job.tasks
    for task in job.tasks:
        job.mark_sent(task, 1.0)
    job.mark_progress(c, 50)
    assert job.progress == 16  # floor(50 / 3)
    job.settle(a, "resolved", None, CREATED + 1)
    assert (job.finish_count, job.error_count, job.done_count) == (1, 0, 1)
    assert job.progress == 50  # floor(150 / 3)
    assert not job.final and job.status == "dispatching"
    job.settle(b, "error", {"code": 500}, CREATED + 2)
    assert (job.finish_count, job.error_count, job.done_count) == (1, 1, 2)
    assert job.progress == 83  # floor(250 / 3)
    assert not job.final
    assert_invariants(job)
    job.settle(c, "resolved", None, CREATED + 3)
    assert (job.finish_count, job.error_count, job.done_count) == (2, 1, 3)
    assert (job.progress, job.status, job.finish_at, job.final) == (
        100,
        "resolved",
        CREATED + 3,
        True,
    )
    assert_invariants(job)


def test_a_job_whose_every_task_errs_still_resolves() -> None:
    job = make_job(devices=2)
    for task in job.tasks:
        job.settle(task, "error", None, CREATED + 1)
    assert (job.status, job.error_count, job.finish_count) == ("resolved", 2, 0)
    assert_invariants(job)


@pytest.mark.parametrize("status", ["timeout", "cancelled"])
def test_finish_settles_only_the_unsettled_tasks(status: str) -> None:
    job = make_job(devices=3)
    a, b, c = job.tasks
    job.mark_sent(a, 1.0)
    job.mark_sent(b, 1.0)
    job.settle(a, "resolved", {"ok": 1}, CREATED + 1)
    job.mark_progress(b, 30)
    changed = job.finish(status, CREATED + 9)  # type: ignore[arg-type]
    assert changed == [b, c]
    assert (a.status, a.result, a.finish_at) == ("resolved", {"ok": 1}, CREATED + 1)
    assert [(t.status, t.result, t.finish_at) for t in (b, c)] == [(status, None, CREATED + 9)] * 2
    assert (job.status, job.finish_at, job.progress) == (status, CREATED + 9, 100)
    assert (job.finish_count, job.error_count) == (1, 2)
    assert_invariants(job)
    # Final now: nothing else moves.
    assert job.finish("cancelled", CREATED + 10) == []
    assert job.status == status
    assert job.mark_sent(c, 1.0) is False


def test_finish_after_the_job_resolved_changes_nothing() -> None:
    job = make_job(devices=1)
    job.settle(job.tasks[0], "resolved", None, CREATED + 1)
    assert job.finish("timeout", CREATED + 2) == []
    assert (job.status, job.finish_at) == ("resolved", CREATED + 1)


def test_finish_refuses_other_statuses() -> None:
    job = make_job()
    for status in ("resolved", "pending", "error"):
        with pytest.raises(ValueError, match="only by timeout or cancel"):
            job.finish(status, CREATED)  # type: ignore[arg-type]
    assert not job.final


def test_mark_sent_after_the_job_ended_is_refused() -> None:
    job = make_job(devices=2)
    job.finish("cancelled", CREATED + 1)
    assert all(job.mark_sent(task, 1.0) is False for task in job.tasks)


def test_restore_recomputes_counts_and_progress_from_the_tasks() -> None:
    original = make_job(devices=3)
    a, b, c = original.tasks
    original.mark_sent(a, 1.0)
    original.mark_sent(b, 1.0)
    original.mark_progress(b, 40)
    original.settle(a, "error", {"code": 500}, CREATED + 1)
    restored = JobRecord.restore(1, original.tasks, None, CREATED, "dispatching", None)
    assert (restored.finish_count, restored.error_count, restored.progress) == (0, 1, 46)
    assert (restored.status, restored.final) == ("dispatching", False)
    assert_invariants(restored)
    # It goes on like the original would.
    restored.settle(b, "resolved", None, CREATED + 2)
    restored.settle(c, "resolved", None, CREATED + 3)
    assert (restored.status, restored.finish_at, restored.progress) == (
        "resolved",
        CREATED + 3,
        100,
    )
    assert_invariants(restored)


# -- views ---------------------------------------------------------------------------------


def test_job_views_with_ids_tasks_or_no_collection() -> None:
    job = make_job(devices=2, timeout=60.0)
    a, b = job.tasks
    job.mark_sent(a, 1.0)
    job.settle(a, "resolved", {"ok": 1}, CREATED + 1)
    assert job.task(a.id) is a and job.task(999) is None

    ids = job.view("ids")
    assert ids.collection == [100, 101]
    assert (ids.id, ids.status, ids.progress, ids.timeout) == (1, "dispatching", 50, 60.0)
    assert (ids.total_count, ids.done_count, ids.finish_count, ids.error_count) == (2, 1, 1, 0)
    assert (ids.created_at, ids.finish_at) == ("2011-12-19T15:28:46.493Z", None)
    assert job.view().collection == [100, 101]  # "ids" is the default

    none = job.view(None)
    assert none.collection is msgspec.UNSET
    assert "collection" not in msgspec.json.decode(msgspec.json.encode(none))

    tasks = job.view("tasks")
    assert isinstance(tasks.collection, list)
    first, second = tasks.collection
    assert isinstance(first, TaskView) and isinstance(second, TaskView)
    assert (first.id, first.destination, first.task.status, first.task.result) == (
        100,
        "d0",
        "resolved",
        {"ok": 1},
    )
    assert first.task.finish_at == "2011-12-19T15:28:47.493Z"
    assert (second.task.status, second.task.finish_at, second.task.progress) == (
        "pending",
        None,
        0,
    )


def test_task_view_wire_shape() -> None:
    task = TaskRecord(
        task_id=5,
        job_id=1,
        entry=0,
        device="d",
        method="post",
        resource="/r",
        data={"a": 1},
        tunnel="/remote/d/response",
        timeout=2.5,
        created_at=CREATED,
    )
    assert not task.final
    assert msgspec.json.decode(msgspec.json.encode(task.view())) == {
        "id": 5,
        "method": "post",
        "resource": "/r",
        "tunnel": "/remote/d/response",
        "data": {"a": 1},
        "__destination": "d",
        "__task": {
            "createdAt": "2011-12-19T15:28:46.493Z",
            "finishAt": None,
            "timeout": 2.5,
            "status": "pending",
            "progress": 0,
            "result": None,
            "expiresAt": None,
            "waiting": None,
            "sends": 0,
            "sentAt": None,
            "attempts": 0,
            "nextAttemptAt": None,
        },
    }


def test_job_view_finished_wire_shape() -> None:
    job = make_job(devices=1)
    job.finish("timeout", CREATED + 1)
    encoded = msgspec.json.decode(msgspec.json.encode(job.view("ids")))
    assert encoded == {
        "id": 1,
        "createdAt": "2011-12-19T15:28:46.493Z",
        "finishAt": "2011-12-19T15:28:47.493Z",
        "timeout": None,
        "status": "timeout",
        "progress": 100,
        "totalCount": 1,
        "doneCount": 1,
        "finishCount": 0,
        "errorCount": 1,
        "pendingCount": 0,
        "sentCount": 0,
        "expiredCount": 0,
        "retriedCount": 0,
        "holds": [],
        "outcomes": {"resolved": {}, "error": {}, "timeout": 1, "expired": 0, "cancelled": 0},
        "outcome": "failed",
        "eta": None,
        "collection": [100],
    }


# -- waiting and expiry --------------------------------------------------------------------


def test_waiting_is_for_pending_tasks_and_cleared_when_sent_or_settled() -> None:
    job = make_job(devices=3)
    first, second, third = job.tasks
    assert job.mark_waiting(first, "device-offline")
    assert not job.mark_waiting(first, "device-offline")  # no change, nothing to tell
    assert job.mark_waiting(first, "device-busy")
    assert job.mark_waiting(second, "device-busy") and job.mark_waiting(third, "device-offline")
    assert job.mark_sent(first, 1.0) and first.waiting is None
    assert not job.mark_waiting(first, "device-busy")  # sent: it waits for nothing
    assert job.settle(second, "expired", {"error": "x"}, CREATED + 1)
    assert second.waiting is None
    assert_invariants(job)
    assert (job.pending_count, job.sent_count, job.expired_count, job.error_count) == (1, 1, 1, 1)
    job.finish("cancelled", CREATED + 2)
    assert_invariants(job)
    assert (job.pending_count, job.sent_count, job.expired_count) == (0, 0, 1)


def test_restore_recounts_pending_sent_and_expired_from_the_tasks() -> None:
    tasks = make_job(devices=4).tasks
    for task, status in zip(tasks, ["pending", "sent", "expired", "resolved"], strict=True):
        task.status = status  # type: ignore[assignment]
    restored = JobRecord.restore(1, tasks, None, CREATED, "dispatching", None)
    assert (restored.pending_count, restored.sent_count, restored.expired_count) == (1, 1, 1)
    assert (restored.finish_count, restored.error_count) == (1, 1)


def test_expand_batch_sets_expires_at_from_the_entry_else_the_default() -> None:
    tasks = expand_batch(
        1,
        [batch_entry(["a", "b"], expiresIn=5), batch_entry("c")],
        next_task_id=itertools.count(1).__next__,
        tunnel_for=lambda device: device,
        default_timeout=30.0,
        default_expires_in=60.0,
        now=CREATED,
    )
    assert [task.expires_at for task in tasks] == [CREATED + 5, CREATED + 5, CREATED + 60]
    view = tasks[0].view().task
    assert (view.expires_at, view.waiting) == (iso_timestamp(CREATED + 5), None)
