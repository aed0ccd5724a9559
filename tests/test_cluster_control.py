"""Job-wide control in a cluster, the pure part (pm/cluster/_control.py): which transitions a
pause, a resume and a cancel make and refuse (the single gateway's rules and sentences),
abort criteria on the job-wide counts, and what a trip writes. No database, no trio."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from pm.cluster._control import (
    ControlRow,
    JobWide,
    decide,
    first_trip,
    schedule_end_change,
    tripped_change,
)
from pm.job_contract import JobStateError
from pm.job_options import AbortCriterion, JobOptions
from pm.outcomes import OutcomeHistogram
from pm.rollout import RolloutState

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()


def row(**changes: Any) -> ControlRow:  # noqa: ANN401
    values: dict[str, Any] = {
        "id": 7,
        "status": "dispatching",
        "final": False,
        "holds_text": None,
        "ending": "resolved",
        "rollout_state_text": None,
        "options": JobOptions(),
    }
    return ControlRow(**{**values, **changes})


def criteria(*specs: dict[str, Any]) -> list[AbortCriterion]:
    return msgspec.convert(list(specs), list[AbortCriterion])


def test_a_pause_holds_the_job_and_a_second_one_is_refused() -> None:
    change = decide("pause", row(), NOW)
    assert change.holds == ["paused"] and change.ending == "resolved"
    paused = row(holds_text='["paused"]', status="paused")
    assert paused.job_wide == JobWide(paused=True)
    with pytest.raises(JobStateError, match=r"^job 7 is already held \(paused\)$"):
        decide("pause", paused, NOW)


def test_a_resume_clears_only_the_pause_and_is_refused_when_not_paused() -> None:
    paused = row(holds_text='["scheduled", "paused"]', status="paused")
    assert decide("resume", paused, NOW).holds == ["scheduled"]
    with pytest.raises(JobStateError, match=r"^job 7 is not held \(paused\): it is dispatching$"):
        decide("resume", row(), NOW)


def test_a_resume_after_the_schedules_end_is_refused_as_on_one_gateway() -> None:
    options = msgspec.convert({"schedule": {"endAt": "2026-12-01T11:00:00Z"}}, JobOptions)
    with pytest.raises(JobStateError, match="its schedule ended at 2026-12-01T11:00:00"):
        decide("resume", row(holds_text='["paused"]', options=options), NOW)


def test_a_cancel_stops_the_job_once() -> None:
    change = decide("cancel", row(), NOW)
    assert change.ending == "cancelled" and change.holds == []
    with pytest.raises(JobStateError, match="^job 7 is dispatching: nothing to cancel$"):
        decide("cancel", row(ending="cancelled"), NOW)


@pytest.mark.parametrize("action", ["pause", "resume", "cancel"])
def test_nothing_is_done_to_a_final_job(action: Any) -> None:  # noqa: ANN401
    with pytest.raises(JobStateError, match="^job 7 is resolved: it has finished$"):
        decide(action, row(status="resolved", final=True, holds_text='["paused"]'), NOW)


def test_a_criterion_trips_on_the_job_wide_counts_once_enough_tasks_settled() -> None:
    on_errors = criteria({"on": "error", "thresholdPercent": 50, "minSettled": 12})
    eight = OutcomeHistogram(error={"500": 8})
    assert first_trip(on_errors, [], eight) is None  # one gateway's share: too few
    sixteen = OutcomeHistogram(resolved={"200": 4}, error={"500": 12})
    assert first_trip(on_errors, [], sixteen) == 0
    assert first_trip(on_errors, [0], sixteen) is None  # tripped before: never again
    mostly_fine = OutcomeHistogram(resolved={"200": 13}, error={"500": 12})
    assert first_trip(on_errors, [], mostly_fine) is None


def test_failed_counts_every_final_status_but_resolved() -> None:
    failed = criteria(
        {"on": "timeout", "thresholdPercent": 90},
        {"on": "failed", "thresholdPercent": 75, "minSettled": 4},
    )
    outcomes = OutcomeHistogram(resolved={"200": 1}, error={"unknown": 1}, timeout=1, expired=1)
    assert first_trip(failed, [], outcomes) == 1


def test_a_trip_stops_the_job_aborted_or_pauses_it_and_is_recorded() -> None:
    options = msgspec.convert(
        {"abort": [{"on": "error", "thresholdPercent": 5}, {"on": "timeout",
         "thresholdPercent": 5, "action": "pause"}]},
        JobOptions,
    )  # fmt: skip
    stop = tripped_change(row(options=options), 0)
    assert stop.ending == "aborted" and stop.holds == []
    assert stop.rollout_state == RolloutState(tripped=[0], stopped_by=0)
    pause = tripped_change(row(options=options, rollout_state_text='{"tripped":[0]}'), 1)
    assert pause.ending == "resolved" and pause.holds == ["paused"]
    assert pause.rollout_state == RolloutState(tripped=[0, 1], stopped_by=1)
    # While the job stops already, a trip is only recorded.
    late = tripped_change(row(options=options, ending="cancelled"), 1)
    assert (late.ending, late.holds, late.rollout_state.stopped_by) == ("cancelled", [], None)
    assert late.rollout_state.tripped == [1]


def test_a_schedules_end_pauses_or_stops_the_job_once() -> None:
    pause_at_end = msgspec.convert({"schedule": {"endAt": "2026-12-01T11:00:00Z"}}, JobOptions)
    change = schedule_end_change(row(options=pause_at_end, holds_text='["outside-window"]'))
    assert change is not None and change.holds == ["outside-window", "paused"]
    assert schedule_end_change(row(options=pause_at_end, holds_text='["paused"]')) is None
    cancel_at_end = msgspec.convert(
        {"schedule": {"endAt": "2026-12-01T11:00:00Z", "endBehavior": "cancel"}}, JobOptions
    )
    stop = schedule_end_change(row(options=cancel_at_end))
    assert stop is not None and stop.ending == "cancelled"
    assert schedule_end_change(row(options=cancel_at_end, ending="aborted")) is None
    assert schedule_end_change(row(options=pause_at_end, final=True)) is None
    assert schedule_end_change(row()) is None  # no schedule
