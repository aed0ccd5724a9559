"""A job's outcome histogram, summary outcome and ETA (pm.outcomes, pm.state)."""

from __future__ import annotations

import pytest

from pm.outcomes import (
    _CODE_KEYS,
    MAX_CACHED_CODES,
    OutcomeCounter,
    OutcomeHistogram,
    SettleRate,
    summary_outcome,
)
from pm.state import JobRecord
from tests.test_state import CREATED, make_job


def test_histogram_counts_final_statuses_and_answer_codes() -> None:
    job = make_job(devices=6)
    a, b, c, d, e, f = job.tasks
    job.settle(a, "resolved", {}, CREATED + 1, 200)
    job.settle(b, "resolved", {}, CREATED + 2, 204)
    job.settle(c, "error", {"code": 503}, CREATED + 3, 503)
    job.settle(d, "error", {"error": "restarted"}, CREATED + 4)
    job.settle(e, "expired", None, CREATED + 5)
    assert job.view().outcomes == OutcomeHistogram(
        resolved={"200": 1, "204": 1}, error={"503": 1, "unknown": 1}, expired=1
    )
    assert job.view().outcome is None  # not final yet
    job.finish("cancelled", CREATED + 6)
    assert f.status == "cancelled" and job.view().outcomes.cancelled == 1
    assert job.view().outcome == "partial"
    # The view holds copies: a later report never changes a snapshot already sent.
    snapshot = job.view().outcomes
    job.outcomes.add("resolved", 200)
    assert snapshot.resolved == {"200": 1, "204": 1}


@pytest.mark.parametrize(
    ("resolved", "total", "final", "expected"),
    [
        (3, 3, True, "succeeded"),
        (0, 3, True, "failed"),
        (1, 3, True, "partial"),
        (3, 3, False, None),
    ],
)
def test_summary_outcome(resolved: int, total: int, final: bool, expected: str | None) -> None:
    assert summary_outcome(final=final, total=total, resolved=resolved) == expected


def test_a_job_whose_every_task_failed_reads_failed_not_just_resolved() -> None:
    job = make_job(devices=2)
    for task in job.tasks:
        job.settle(task, "error", {"code": 500}, CREATED + 1, 500)
    view = job.view()
    assert (view.status, view.outcome) == ("resolved", "failed")


def test_eta_from_the_observed_settle_rate() -> None:
    job = make_job(devices=5)
    assert job.view().eta is None
    job.settle(job.tasks[0], "resolved", {}, CREATED + 10, 200)
    assert job.eta() is None  # one settle is no rate
    job.settle(job.tasks[1], "resolved", {}, CREATED + 12, 200)
    job.settle(job.tasks[2], "resolved", {}, CREATED + 14, 200)
    # 2 s per task observed, 2 tasks left after the last settle at +14.
    assert job.eta() == CREATED + 18
    job.finish("cancelled", CREATED + 15)
    assert job.eta() is None and job.view().eta is None


def test_restore_recounts_the_histogram_from_the_tasks_codes() -> None:
    job = make_job(devices=3)
    job.settle(job.tasks[0], "resolved", {}, CREATED + 1, 201)
    job.settle(job.tasks[1], "error", {"code": 404}, CREATED + 2, 404)
    restored = JobRecord.restore(1, job.tasks, None, CREATED, job.status, job.finish_at)
    assert restored.view().outcomes == job.view().outcomes
    assert restored.eta() is None  # a restored job measures its rate afresh


def test_an_unknown_status_is_a_bug() -> None:
    with pytest.raises(AssertionError):
        OutcomeCounter().add("pending", None)


def test_the_code_key_cache_is_bounded_whatever_devices_answer() -> None:
    counter = OutcomeCounter()
    for code in range(100_000, 100_000 + MAX_CACHED_CODES + 50):
        counter.add("error", code)
    assert len(counter.error) == MAX_CACHED_CODES + 50
    assert len(_CODE_KEYS) <= MAX_CACHED_CODES


def test_a_rate_from_settle_times_in_any_order_is_the_observed_ones() -> None:
    # Tasks settled on several gateways are read back in task order, not settle order.
    observed = SettleRate()
    for moment in (10.0, 12.0, 16.0):
        observed.observe(moment)
    read_back = SettleRate.of_settle_times([16.0, 10.0, 12.0])
    assert read_back.eta(3) == observed.eta(3) == 16.0 + 3 * 3.0
    assert SettleRate.of_settle_times([5.0]).eta(1) is None
    assert SettleRate.of_settle_times([]).eta(1) is None
