"""What ``pm watch`` says of a job: its state details and its summary (pm.cli._job_progress)."""

from __future__ import annotations

from typing import Any

import msgspec

from pm.cli._job_progress import JobProgress, outcome_line, state_details, summary
from pm.schemas import JobMessage, JobView

BASE: dict[str, Any] = {
    "id": 7,
    "createdAt": "2026-12-01T12:00:00.000Z",
    "finishAt": None,
    "timeout": None,
    "status": "dispatching",
    "progress": 40,
    "totalCount": 10,
    "doneCount": 4,
    "finishCount": 3,
    "errorCount": 1,
    "pendingCount": 4,
    "sentCount": 2,
    "expiredCount": 0,
}


def job(**fields: Any) -> JobView:
    return msgspec.convert({**BASE, **fields}, JobView)


def test_a_plain_job_has_no_details() -> None:
    assert state_details(job()) == ""
    assert outcome_line(job()) is None


def test_details_say_holds_window_rate_and_eta() -> None:
    details = state_details(
        job(
            holds=["outside-window"],
            rollout={"maxInFlight": 50, "maxPerMinute": 600, "rampSteps": 2, "inFlight": 12},
            eta="2026-12-01T12:05:00.000Z",
        )
    )
    assert details.startswith("held: outside-window; window 12/50, 600/min, ramp step 2; ETA ")


def test_summary_lists_outcomes_by_code_and_each_abort_criterion() -> None:
    final = job(
        status="aborted",
        finishAt="2026-12-01T12:01:00.000Z",
        doneCount=10,
        pendingCount=0,
        sentCount=0,
        finishCount=6,
        errorCount=4,
        outcomes={
            "resolved": {"200": 6},
            "error": {"503": 2, "404": 1},
            "timeout": 0,
            "expired": 0,
            "cancelled": 1,
        },
        outcome="partial",
        abort=[
            {
                "on": "error",
                "thresholdPercent": 25,
                "minSettled": 8,
                "action": "cancel",
                "matching": 3,
                "settled": 10,
                "percent": 30.0,
                "tripped": True,
            }
        ],
        stoppedBy=0,
    )
    progress = JobProgress(7)
    progress.apply(JobMessage(final))
    lines = summary(progress)
    assert "job 7 aborted" in lines[0]
    assert lines[1] == "  outcomes (partial): resolved 200×6, error 404×1 503×2, cancelled 1"
    assert lines[2] == (
        "  abort #0 error ≥ 25% (min 8): 3/10 = 30.0%, tripped (cancel) → stopped the job"
    )
