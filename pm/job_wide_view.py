"""The figures of a job view that a job actor keeps live (``retriedCount``, ``rollout``,
``abort``), made from the job's stored row instead: for a view of a job read from the
database (``GET /jobs``, and in a cluster the WebSocket snapshots of a job run elsewhere,
pm/stored_job_feed.py), where no actor of the job runs.

Pure and cheap: from the row's columns only (its options, rollout state, outcome counts,
tasks sent and retried), never from the tasks, so a view costs no query more and no work per
task. In a cluster those columns are the job-wide ones every gateway's commit recounts
(pm/cluster/_writes.py), and the ramp steps its coordinator stores (pm/cluster/_grants.py).

Differences from a live job's figures: ``abort``'s ``settled`` counts every final task,
those a stop cancelled too (as a restored job's, and as the cluster's trip decides on:
pm/cluster/_control.py ``first_trip``), where a live single gateway's counts the outcomes its
criteria saw; ``rollout.inFlight`` is the tasks sent as committed.
"""

from __future__ import annotations

from collections.abc import Sequence

from .job_options import AbortCriterion, AbortStatus, JobOptions
from .outcomes import OutcomeHistogram, counts_by_status
from .rollout import Pacer, RolloutState, matches
from .schemas import JobView


def add_stored_figures(
    view: JobView, options: JobOptions, state: RolloutState, *, retried: int
) -> None:
    """Set ``view``'s ``retriedCount``, and its ``rollout`` and ``abort`` blocks when the job
    has them, from its row (``view``'s counts, and ``options``, ``state`` and ``retried`` as
    stored)."""
    view.retried_count = retried
    if options.rollout is not None:
        pacer = Pacer(options.rollout, state)  # the window and rate after the stored steps
        pacer.in_flight = view.sent_count
        view.rollout = pacer.status()
    if options.abort:
        view.abort = abort_figures(options.abort, state.tripped, view.outcomes)


def abort_figures(
    criteria: Sequence[AbortCriterion], tripped: Sequence[int], outcomes: OutcomeHistogram
) -> list[AbortStatus]:
    """Each criterion's figures on the job's outcome counts (as
    :meth:`pm.rollout.AbortWatch.status` gives them, without a walk over the outcomes)."""
    by_status = counts_by_status(outcomes)
    settled = sum(by_status.values())
    figures = []
    for index, criterion in enumerate(criteria):
        matching = sum(n for status, n in by_status.items() if matches(criterion.on, status))
        figures.append(
            AbortStatus(
                on=criterion.on,
                threshold_percent=criterion.threshold_percent,
                min_settled=criterion.min_settled,
                action=criterion.action,
                matching=matching,
                settled=settled,
                percent=None if not settled else matching * 100 / settled,
                tripped=index in tripped,
            )
        )
    return figures
