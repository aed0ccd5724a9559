"""What ``pm bench`` prints and writes: the summary lines, ``bench.json`` and ``bench.png``.

The PNG needs matplotlib, which only the ``bench`` extra installs: without it the JSON is
still written and one line says how to get the plot.

Error handling: a file that cannot be written is a :class:`CliError` naming it (the summary
has been printed by then).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from rich.markup import escape

from ..bench_summary import BenchSummary, LatencyFigures, TaskSample, TimelinePoint
from ..schemas import JobView
from ..simulator import DeviceStats
from ._errors import CliError
from ._job_progress import outcome_line

JSON_NAME = "bench.json"
PLOT_NAME = "bench.png"
PLOT_HINT = "pip install 'sanji-puppetmaster[bench]' (matplotlib)"


class BenchRun(msgspec.Struct, kw_only=True, rename="camel"):
    """Everything one run measured: ``bench.json`` is this, encoded."""

    command: str
    started_at: str
    parameters: dict[str, Any]
    # The gateway's URL and release.
    gateway: dict[str, str]
    # POST /jobs sent -> final job message received, on this machine's clock.
    wall_seconds: float
    # The job as the gateway reported it at the end (without its tasks: see samples).
    job: JobView
    summary: BenchSummary
    bucket_seconds: float
    timeline: list[TimelinePoint]
    # What the simulated devices counted (received, answered, overlaps...).
    fleet: DeviceStats
    samples: list[TaskSample]


def duration(seconds: float) -> str:
    """``412 ms`` below a second, else ``1.23 s``."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _percentiles(figures: LatencyFigures | None) -> str:
    if figures is None:
        return "none (no task answered, or a gateway without sentAt)"
    return f"p50 {duration(figures.p50)}, p99 {duration(figures.p99)}, max {duration(figures.max)}"


def report_lines(run: BenchRun) -> list[str]:
    """The summary printed at the end (rich markup; no outside text in it)."""
    summary, job = run.summary, run.job
    devices = run.parameters["devices"]
    lines = [
        f"job {job.id} {job.status}: {summary.tasks} tasks to {devices} devices, "
        f"{summary.settled} settled in {duration(summary.seconds)} (gateway clock; "
        f"{duration(run.wall_seconds)} from POST to the final message here)",
        f"  throughput: {summary.tasks_per_second:,.1f} tasks/s",
    ]
    answered = sum(summary.statuses.get(status, 0) for status in ("resolved", "error"))
    lines.append(f"  latency over the {answered} answered tasks (gateway clock):")
    for name, meaning, figures in (
        ("settle", "job created → task settled", summary.settle_latency),
        ("answer", "request sent → answer", summary.answer_latency),
    ):
        lines.append(f"    {name} ({meaning}): {_percentiles(figures)}")
    statuses = ", ".join(f"{status} {count}" for status, count in summary.statuses.items())
    lines.append(f"  statuses: {statuses}")
    # Answer codes from the job's own histogram: a resolved task's result has no code.
    if (outcomes := outcome_line(job)) is not None:
        lines.append(outcomes)
    share = 100 * summary.errors / summary.tasks if summary.tasks else 0.0
    lines.append(
        f"  errors: {summary.errors} of {summary.tasks} ({share:.1f}%); "
        f"retried {summary.retried}, re-sent {summary.resent}"
    )
    fleet = run.fleet
    lines.append(
        f"  fleet: received {fleet.received}, answered {fleet.answered}, errors {fleet.errors}, "
        f"overlaps {fleet.overlaps}, duplicates {fleet.duplicates}"
    )
    return lines


def write_outputs(run: BenchRun, out: Path) -> list[str]:
    """Write ``bench.json`` and (with matplotlib) ``bench.png`` in ``out``; returns the lines
    saying what was written."""
    json_path = out / JSON_NAME
    try:
        json_path.write_bytes(msgspec.json.format(msgspec.json.encode(run), indent=1) + b"\n")
    except OSError as error:
        raise CliError(f"cannot write {json_path}: {error.strerror}") from None
    lines = [f"wrote {escape(str(json_path))} ({len(run.samples)} task samples)"]
    plot_path = out / PLOT_NAME
    try:
        written = write_plot(run, plot_path)
    except OSError as error:
        raise CliError(f"cannot write {plot_path}: {error.strerror}") from None
    lines.append(
        escape(
            f"wrote {plot_path}"
            if written
            else f"no {PLOT_NAME}: matplotlib is missing; {PLOT_HINT}"
        )
    )
    return lines


def write_plot(run: BenchRun, path: Path) -> bool:
    """Tasks/s (top) and p50/p99 answer latency (bottom) over the run; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    starts = [point.start for point in run.timeline]
    figure, (rate_axes, latency_axes) = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
    rate_axes.step(starts, [p.tasks_per_second for p in run.timeline], where="post")
    rate_axes.set_ylabel(f"tasks/s (per {run.bucket_seconds:g} s)")
    rate_axes.set_ylim(bottom=0)
    for label, values in (
        ("p50", [p.answer_p50 for p in run.timeline]),
        ("p99", [p.answer_p99 for p in run.timeline]),
    ):
        # NaN leaves a gap where no task was answered.
        latency_axes.plot(
            starts, [float("nan") if v is None else v * 1000 for v in values], label=label
        )
    latency_axes.set_ylabel("answer latency, ms (sent → answer)")
    latency_axes.set_xlabel("seconds since the job was created")
    latency_axes.set_ylim(bottom=0)
    latency_axes.legend()
    for axes in (rate_axes, latency_axes):
        axes.grid(True, alpha=0.3)
    figure.suptitle(
        f"pm bench: job {run.job.id}, {run.summary.tasks} tasks, "
        f"{run.parameters['devices']} devices, {run.summary.tasks_per_second:,.0f} tasks/s"
    )
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
    return True
