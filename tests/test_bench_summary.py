"""pm bench's figures from a job's tasks (pm.bench_summary): pure, no gateway."""

from __future__ import annotations

import pytest

from pm.bench_summary import (
    BUCKET_WIDTHS,
    MAX_BUCKETS,
    TaskSample,
    bucket_width,
    parse_timestamp,
    percentile,
    sample_of,
    summarize,
    timeline,
)
from pm.schemas import TaskState, TaskView


def _sample(
    task: int,
    status: str,
    settled_after: float | None,
    attempts: int = 1,
    sends: int = 1,
    answer: float | None = 0.01,
) -> TaskSample:
    """A task settled ``settled_after`` seconds after its job's creation, whose request was
    sent ``answer`` seconds before that (None: the gateway gave no sentAt)."""
    code = 500 if status == "error" else None
    sent = None if settled_after is None or answer is None else settled_after - answer
    return TaskSample(
        task=task,
        device=f"d{task % 3}",
        status=status,
        code=code,
        settled_after=settled_after,
        sent_after=sent,
        attempts=attempts,
        sends=sends,
    )


def test_a_task_is_timed_from_its_jobs_creation_to_its_finish() -> None:
    task = TaskView(
        id=7,
        method="get",
        resource="/x",
        tunnel="/t",
        data={},
        destination="aa",
        task=TaskState(
            created_at="2026-12-01T12:00:00.000Z",
            sent_at="2026-12-01T12:00:01.000Z",
            finish_at="2026-12-01T12:00:01.250Z",
            timeout=5,
            status="error",
            progress=100,
            result={"code": 503, "data": {"message": "busy"}},
            attempts=2,
            sends=3,
        ),
    )
    sample = sample_of(task, job_created_at=parse_timestamp("2026-12-01T12:00:00.000Z"))
    assert sample.settled_after == pytest.approx(1.25)
    assert sample.sent_after == pytest.approx(1.0)
    assert (sample.task, sample.device, sample.status, sample.code) == (7, "aa", "error", 503)
    assert (sample.attempts, sample.sends) == (2, 3)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile([3.0], 0.99) == 3


def test_the_summary_times_answered_tasks_and_counts_the_rest() -> None:
    samples = [_sample(n, "resolved", 0.1 * n, answer=0.01 * n) for n in range(1, 9)]
    samples.append(_sample(9, "error", 0.95, attempts=2, sends=2, answer=0.09))
    samples.append(_sample(10, "timeout", 30.0, answer=29.0))  # a deadline: not timed
    # Re-sent once within its attempt; a millisecond "before" it was sent (rounded stamps).
    samples.append(_sample(11, "resolved", 0.5, sends=2, answer=-0.001))
    summary = summarize(samples)
    assert summary.tasks == summary.settled == 11
    assert summary.statuses == {"error": 1, "resolved": 9, "timeout": 1}
    assert summary.errors == 2
    assert (summary.retried, summary.resent) == (1, 1)
    # Throughput over the whole run, the timeout's settling included.
    assert summary.seconds == 30.0
    assert summary.tasks_per_second == pytest.approx(11 / 30)
    assert summary.settle_latency is not None
    assert summary.settle_latency.max == pytest.approx(0.95)
    assert summary.settle_latency.p50 == pytest.approx(0.5)
    assert summary.answer_latency is not None
    assert summary.answer_latency.max == pytest.approx(0.09)
    assert summary.answer_latency.p50 == pytest.approx(0.04)


def test_a_run_without_answers_has_no_latency() -> None:
    summary = summarize([_sample(1, "timeout", 5.0), _sample(2, "pending", None)])
    assert summary.settle_latency is None and summary.answer_latency is None
    assert (summary.tasks, summary.settled) == (2, 1)


def test_a_gateway_without_sent_at_gives_settle_latency_only() -> None:
    summary = summarize([_sample(1, "resolved", 0.3, answer=None)])
    assert summary.settle_latency is not None and summary.answer_latency is None


@pytest.mark.parametrize(
    ("seconds", "width"), [(0.5, 0.1), (12.0, 0.1), (12.1, 0.2), (100.0, 1.0), (1e6, 300.0)]
)
def test_buckets_are_the_narrowest_giving_a_readable_curve(seconds: float, width: float) -> None:
    assert bucket_width(seconds) == width
    assert width == BUCKET_WIDTHS[-1] or seconds / width <= MAX_BUCKETS


def test_the_timeline_shows_rate_and_latency_per_bucket_and_stalls_as_zero() -> None:
    # 0.1 s buckets (the run lasts 1 s): three tasks in the first, none until the last.
    samples = [
        _sample(1, "resolved", 0.02, answer=0.01),
        _sample(2, "resolved", 0.05, answer=0.02),
        _sample(3, "error", 0.08, answer=0.04),
        _sample(4, "timeout", 0.6),
        _sample(5, "resolved", 1.0, answer=0.5),
        _sample(6, "pending", None),
    ]
    width, points = timeline(samples)
    assert width == 0.1
    assert [point.start for point in points] == pytest.approx([n / 10 for n in range(11)])
    assert points[0].tasks_per_second == pytest.approx(30)
    assert (points[0].answer_p50, points[0].answer_p99) == pytest.approx((0.02, 0.04))
    assert points[1].tasks_per_second == 0 and points[1].answer_p50 is None
    # A timeout counts in the rate, not in the latency.
    assert points[6].tasks_per_second == pytest.approx(10) and points[6].answer_p50 is None
    assert points[10].answer_p99 == pytest.approx(0.5)


def test_no_settled_task_gives_an_empty_timeline() -> None:
    assert timeline([_sample(1, "pending", None)])[1] == []
