"""What ``pm bench`` measured, from the tasks of its job: throughput, latency, outcomes.

Pure (no I/O, no clock): the command hands in the job's tasks as the API shows them
(``GET /jobs/{id}/tasks``) and writes out what comes back.

Definitions, all on the gateway's own clock (its millisecond ``createdAt``/``sentAt``/
``finishAt`` stamps, so the benchmark machine's clock and its distance to the gateway do not
enter), over the tasks a device answered (``resolved`` or ``error``; those that timed out,
expired or were cancelled are counted, not timed: their ``finishAt`` is a deadline):

- **settle latency**: from the job's ``createdAt`` (the job was accepted) to the task's
  ``finishAt`` (its final answer was stored). It includes the wait behind earlier tasks of
  the same device (one command in flight per device), behind the job's rollout window and
  rate, and retries: what a user of the API waits for. Plotted over time it is the time
  axis itself, so only its percentiles are given.
- **answer latency**: from the task's ``sentAt`` (its request, of its last attempt, left
  the gateway) to its ``finishAt``: the broker both ways, the device's own time and the
  gateway's handling of the answer. This is the one plotted over time. A gateway older than
  ``sentAt`` gives none.
- **tasks/s**: the tasks that settled (any final status) divided by the seconds from the
  job's ``createdAt`` to the last ``finishAt``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import msgspec

from .schemas import TaskView

ANSWERED_STATUSES = frozenset({"resolved", "error"})
# Widths tried for the timeline's buckets, smallest first: the first giving at most
# MAX_BUCKETS buckets is used, so a 2 s run and a 2 h run both plot a readable curve.
BUCKET_WIDTHS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
MAX_BUCKETS = 120


class TaskSample(msgspec.Struct, kw_only=True, rename="camel"):
    """One task of the benchmark's job, as measured."""

    task: int
    device: str
    status: str
    # The Sanji code in the task's result: error answers carry it. A resolved task's result
    # is its answer's data alone, so its code is None here and counted only in the job's
    # ``outcomes`` (the summary's answer codes come from there).
    code: int | None
    # Seconds from the job's createdAt to the task's finishAt; None while not settled.
    settled_after: float | None
    # Seconds from the job's createdAt to the task's sentAt; None if never sent (or the
    # gateway does not say).
    sent_after: float | None = None
    attempts: int
    sends: int


class LatencyFigures(msgspec.Struct, kw_only=True):
    p50: float
    p99: float
    max: float


class BenchSummary(msgspec.Struct, kw_only=True, rename="camel"):
    tasks: int
    settled: int
    seconds: float
    tasks_per_second: float
    # None when no task was answered (answer latency: or the gateway gives no sentAt).
    settle_latency: LatencyFigures | None
    answer_latency: LatencyFigures | None
    statuses: dict[str, int]
    # Tasks that did not end resolved.
    errors: int
    # Tasks retried (attempts > 1), and tasks whose request was published again within one
    # attempt (sends > attempts: its device or the broker connection came back).
    retried: int
    resent: int


class TimelinePoint(msgspec.Struct, kw_only=True, rename="camel"):
    # Start of the bucket, seconds after the job's createdAt.
    start: float
    tasks_per_second: float
    # Answer latency of the tasks answered in this bucket; None if none was.
    answer_p50: float | None
    answer_p99: float | None


def parse_timestamp(stamp: str) -> float:
    """A gateway timestamp (``2026-12-01T12:00:05.123Z``) as seconds since the epoch."""
    return datetime.fromisoformat(stamp).timestamp()


def sample_of(task: TaskView, job_created_at: float) -> TaskSample:
    """The figures of one task; ``job_created_at`` from :func:`parse_timestamp`."""
    state = task.task
    finish, sent = state.finish_at, state.sent_at
    return TaskSample(
        task=task.id,
        device=task.destination,
        status=state.status,
        code=answer_code(state.result),
        settled_after=None if finish is None else parse_timestamp(finish) - job_created_at,
        sent_after=None if sent is None else parse_timestamp(sent) - job_created_at,
        attempts=state.attempts,
        sends=state.sends,
    )


def answer_code(result: Any) -> int | None:
    """The ``code`` of a device's answer, if the result is one."""
    if isinstance(result, dict):
        code = result.get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    return None


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of non-empty ``values`` (``fraction`` 0.99 for p99)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def latency_figures(values: Sequence[float]) -> LatencyFigures | None:
    if not values:
        return None
    return LatencyFigures(
        p50=percentile(values, 0.5), p99=percentile(values, 0.99), max=max(values)
    )


def _settle_latency(sample: TaskSample) -> float | None:
    if sample.status in ANSWERED_STATUSES and sample.settled_after is not None:
        return sample.settled_after
    return None


def _answer_latency(sample: TaskSample) -> float | None:
    settled = _settle_latency(sample)
    if settled is None or sample.sent_after is None:
        return None
    # Both stamps are rounded to the millisecond: an answer within one may show as -0.001.
    return max(0.0, settled - sample.sent_after)


def _figures(
    samples: Sequence[TaskSample], latency: Callable[[TaskSample], float | None]
) -> LatencyFigures | None:
    return latency_figures([value for s in samples if (value := latency(s)) is not None])


def summarize(samples: Sequence[TaskSample]) -> BenchSummary:
    """The figures of a whole run (see the module docstring for their definitions)."""
    settled = [s.settled_after for s in samples if s.settled_after is not None]
    seconds = max(settled, default=0.0)
    return BenchSummary(
        tasks=len(samples),
        settled=len(settled),
        seconds=seconds,
        # A run settled within the stamps' millisecond: one millisecond, not a division by 0.
        tasks_per_second=len(settled) / max(seconds, 0.001) if settled else 0.0,
        settle_latency=_figures(samples, _settle_latency),
        answer_latency=_figures(samples, _answer_latency),
        statuses=dict(sorted(Counter(s.status for s in samples).items())),
        errors=sum(s.status != "resolved" for s in samples),
        retried=sum(s.attempts > 1 for s in samples),
        resent=sum(s.sends > max(s.attempts, 1) for s in samples),
    )


def bucket_width(seconds: float) -> float:
    """The narrowest of :data:`BUCKET_WIDTHS` that cuts ``seconds`` into at most
    :data:`MAX_BUCKETS` buckets (the widest for longer runs)."""
    for width in BUCKET_WIDTHS:
        if seconds / width <= MAX_BUCKETS:
            return width
    return BUCKET_WIDTHS[-1]


def _bucket_of(seconds: float, width: float) -> int:
    # Not ``seconds // width``: 1.0 // 0.1 is 9.0 in binary floating point.
    return math.floor(seconds / width + 1e-9)


def timeline(samples: Sequence[TaskSample]) -> tuple[float, list[TimelinePoint]]:
    """Tasks/s and answer latency over the run, by settle time: ``(bucket width, points)``, one
    point per bucket from the job's creation to the last settled task (empty buckets
    included, at 0 tasks/s, so the plot shows stalls)."""
    settled = [s for s in samples if s.settled_after is not None]
    if not settled:
        return BUCKET_WIDTHS[0], []
    end = max(s.settled_after for s in settled if s.settled_after is not None)
    width = bucket_width(end)
    count = _bucket_of(end, width) + 1
    settled_in = [0] * count
    answered_in: list[list[float]] = [[] for _ in range(count)]
    for sample in settled:
        assert sample.settled_after is not None
        # A finishAt a millisecond before createdAt (two stamps of one instant) is bucket 0.
        index = min(count - 1, max(0, _bucket_of(sample.settled_after, width)))
        settled_in[index] += 1
        if (latency := _answer_latency(sample)) is not None:
            answered_in[index].append(latency)
    points = []
    for index in range(count):
        figures = latency_figures(answered_in[index])
        points.append(
            TimelinePoint(
                start=round(index * width, 3),
                tasks_per_second=settled_in[index] / width,
                answer_p50=None if figures is None else figures.p50,
                answer_p99=None if figures is None else figures.p99,
            )
        )
    return width, points
