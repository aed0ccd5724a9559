"""What ``pm watch`` knows of a job and how it says it: the progress from the stream's
messages, the one-line state (counts, window and rate, holds, ETA) and the final summary
(outcomes by answer code, abort criteria, failed tasks).

Pure (no I/O); :mod:`pm.cli._watch` feeds it and prints its lines.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import msgspec
from rich.markup import escape

from ..schemas import (
    FINAL_JOB_STATUSES,
    FINAL_TASK_STATUSES,
    JobMessage,
    JobView,
    TaskMessage,
    TasksMessage,
    TaskView,
)
from ._errors import EXIT_FAILED, EXIT_OK

# Failed tasks listed in the summary; the rest are only counted.
MAX_FAILED_SHOWN = 10
MAX_RESULT_CHARS = 80
FAILED_TASK_STATUSES = FINAL_TASK_STATUSES - {"resolved"}


class JobProgress:
    """What the watcher knows so far: the latest job snapshot and the tasks seen failing.

    Pure (no I/O), so the displays and the summary are fed from one place.
    """

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.job: JobView | None = None
        self.failed: dict[int, TaskView] = {}

    def apply(self, message: JobMessage | TaskMessage | TasksMessage) -> None:
        match message:
            case JobMessage(job):
                self.job = job
            case TaskMessage(task):
                self._task_changed(task)
            case TasksMessage(tasks):
                for task in tasks:
                    self._task_changed(task)
            case _:
                raise AssertionError(f"unexpected watch message {message!r}")

    def _task_changed(self, task: TaskView) -> None:
        if task.task.status in FAILED_TASK_STATUSES:
            self.failed[task.id] = task

    @property
    def final(self) -> bool:
        return self.job is not None and self.job.status in FINAL_JOB_STATUSES

    @property
    def exit_status(self) -> int:
        job = self.job
        ok = job is not None and job.status == "resolved" and job.error_count == 0
        return EXIT_OK if ok else EXIT_FAILED


def counts(job: JobView) -> str:
    errors = "1 error" if job.error_count == 1 else f"{job.error_count} errors"
    return f"{job.done_count}/{job.total_count} done, {job.finish_count} resolved, {errors}"


def describe_result(result: Any) -> str:
    """A device's answer in one short line: ``500 simulated error``, else compact JSON."""
    if isinstance(result, dict) and isinstance(result.get("code"), int):
        data = result.get("data")
        message = data.get("message") if isinstance(data, dict) else None
        if isinstance(message, str):
            return f"{result['code']} {message}"
    text = json.dumps(result, separators=(",", ":"))
    if len(text) > MAX_RESULT_CHARS:
        text = text[: MAX_RESULT_CHARS - 1] + "…"
    return text


def _duration(job: JobView) -> str:
    if job.finish_at is None:
        return ""
    try:
        started = datetime.fromisoformat(job.created_at)
        finished = datetime.fromisoformat(job.finish_at)
    except ValueError:
        return ""
    return f" in {(finished - started).total_seconds():.2f} s"


def summary(progress: JobProgress) -> list[str]:
    """The lines printed when the job is final (rich markup, outside text escaped)."""
    job = progress.job
    assert job is not None
    colour = "green" if progress.exit_status == EXIT_OK else "red"
    lines = [f"[{colour}]job {job.id} {job.status}[/]{_duration(job)}: {counts(job)}"]
    if (outcomes := outcome_line(job)) is not None:
        lines.append(outcomes)
    lines.extend(abort_lines(job))
    failed = sorted(progress.failed.values(), key=lambda task: task.id)
    for task in failed[:MAX_FAILED_SHOWN]:
        result = describe_result(task.task.result) if task.task.result is not None else ""
        lines.append(
            f"  task {task.id} → {escape(task.destination)}: {task.task.status} {escape(result)}"
        )
    if len(failed) > MAX_FAILED_SHOWN:
        lines.append(f"  … and {len(failed) - MAX_FAILED_SHOWN} more failed tasks")
    # A slow watcher may miss task messages (never the final job message): say so.
    unseen = job.error_count - len(failed)
    if unseen > 0:
        lines.append(f"  ({unseen} failed task(s) not shown: `GET /jobs/{job.id}?collection=true`)")
    return lines


def local_clock(timestamp: str) -> str:
    """An ISO timestamp from the gateway as the reader's local wall-clock time."""
    try:
        return datetime.fromisoformat(timestamp).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return timestamp


def state_details(job: JobView) -> str:
    """What a running job's counts do not say: holds, window and rate, ETA ("" if none)."""
    parts = []
    if job.holds:
        parts.append(f"held: {', '.join(job.holds)}")
    if job.rollout is not msgspec.UNSET:
        rollout = job.rollout
        window = (
            "no window"
            if rollout.max_in_flight is None
            else (f"window {rollout.in_flight}/{rollout.max_in_flight}")
        )
        rate = "" if rollout.max_per_minute is None else f", {rollout.max_per_minute:g}/min"
        steps = f", ramp step {rollout.ramp_steps}" if rollout.ramp_steps else ""
        parts.append(window + rate + steps)
    if job.eta is not None:
        parts.append(f"ETA {local_clock(job.eta)}")
    return "; ".join(parts)


def outcome_line(job: JobView) -> str | None:
    """``outcomes: resolved 200×8, error 503×2 404×1, timeout 1``; ``None`` before any."""
    histogram = job.outcomes
    parts = []
    for name, by_code in (("resolved", histogram.resolved), ("error", histogram.error)):
        if by_code:
            codes = " ".join(f"{code}×{count}" for code, count in sorted(by_code.items()))
            parts.append(f"{name} {codes}")
    for name, count in (
        ("timeout", histogram.timeout),
        ("expired", histogram.expired),
        ("cancelled", histogram.cancelled),
    ):
        if count:
            parts.append(f"{name} {count}")
    if not parts:
        return None
    outcome = f" ({job.outcome})" if job.outcome is not None else ""
    return f"  outcomes{outcome}: {', '.join(parts)}"


def abort_lines(job: JobView) -> list[str]:
    """One line per abort criterion: its share against its threshold, and which stopped it."""
    if job.abort is msgspec.UNSET:
        return []
    lines = []
    for index, criterion in enumerate(job.abort):
        percent = "-" if criterion.percent is None else f"{criterion.percent:.1f}%"
        state = "tripped" if criterion.tripped else "ok"
        stopped = " → stopped the job" if job.stopped_by == index else ""
        lines.append(
            f"  abort #{index} {criterion.on} ≥ {criterion.threshold_percent:g}% "
            f"(min {criterion.min_settled}): {criterion.matching}/{criterion.settled} = "
            f"{percent}, {state} ({criterion.action}){stopped}"
        )
    return lines
