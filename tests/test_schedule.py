"""pm.schedule: exact instants, both Europe/Berlin daylight-saving changes included."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from pm.schedule import Schedule, ScheduleState, schedule_state


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)  # type: ignore[misc]


def decode(document: dict[str, object]) -> Schedule:
    return msgspec.json.decode(msgspec.json.encode(document), type=Schedule)


NIGHTLY_BERLIN = {"cron": "30 2 * * *", "durationMinutes": 60, "timezone": "Europe/Berlin"}


def test_no_schedule_fields_means_send_now_forever() -> None:
    assert schedule_state(Schedule(), utc(2026, 1, 1)) == ScheduleState(None, None)


def test_scheduled_until_start_at_then_free_until_end_at() -> None:
    schedule = decode({"startAt": "2026-12-01T10:00:00Z", "endAt": "2026-12-01T12:00:00+01:00"})
    assert schedule_state(schedule, utc(2026, 12, 1, 9, 59, 59)) == ScheduleState(
        "scheduled", utc(2026, 12, 1, 10)
    )
    assert schedule_state(schedule, utc(2026, 12, 1, 10)) == ScheduleState(
        None, utc(2026, 12, 1, 11)
    )
    assert schedule_state(schedule, utc(2026, 12, 1, 11)) == ScheduleState("ended", None)


def test_window_in_winter_berlin_is_utc_plus_one() -> None:
    schedule = decode({"windows": [NIGHTLY_BERLIN]})
    # 02:30 Berlin = 01:30 UTC in winter; open for exactly 60 minutes.
    assert schedule_state(schedule, utc(2026, 1, 10, 1, 29, 59)) == ScheduleState(
        "outside-window", utc(2026, 1, 10, 1, 30)
    )
    assert schedule_state(schedule, utc(2026, 1, 10, 1, 30)) == ScheduleState(
        None, utc(2026, 1, 10, 2, 30)
    )
    assert schedule_state(schedule, utc(2026, 1, 10, 2, 30)) == ScheduleState(
        "outside-window", utc(2026, 1, 11, 1, 30)
    )


def test_spring_forward_start_in_the_skipped_hour_fires_at_three() -> None:
    # 2026-03-29 02:00 Berlin jumps to 03:00: 02:30 does not exist; cron runs it at 03:00
    # (01:00 UTC), and the window lasts 60 minutes of elapsed time.
    schedule = decode({"windows": [NIGHTLY_BERLIN]})
    before = schedule_state(schedule, utc(2026, 3, 29, 0, 0))
    assert before == ScheduleState("outside-window", utc(2026, 3, 29, 1, 0))
    assert schedule_state(schedule, utc(2026, 3, 29, 1, 0)) == ScheduleState(
        None, utc(2026, 3, 29, 2, 0)
    )
    # The next day 02:30 exists again, in summer time (UTC+2).
    assert schedule_state(schedule, utc(2026, 3, 29, 2, 0)) == ScheduleState(
        "outside-window", utc(2026, 3, 30, 0, 30)
    )


def test_fall_back_start_in_the_repeated_hour_fires_once_and_lasts_its_duration() -> None:
    # 2026-10-25 03:00 Berlin (summer) goes back to 02:00 (winter): 02:30 happens twice; the
    # window opens once, at the first (00:30 UTC), and closes 60 elapsed minutes later, at
    # the second 02:30 on the wall clock (01:30 UTC) -- not at 03:30 wall time.
    schedule = decode({"windows": [NIGHTLY_BERLIN]})
    assert schedule_state(schedule, utc(2026, 10, 25, 0, 0)) == ScheduleState(
        "outside-window", utc(2026, 10, 25, 0, 30)
    )
    assert schedule_state(schedule, utc(2026, 10, 25, 0, 30)) == ScheduleState(
        None, utc(2026, 10, 25, 1, 30)
    )
    # At the second 02:30 (wall clock) it does not open again.
    assert schedule_state(schedule, utc(2026, 10, 25, 1, 30)) == ScheduleState(
        "outside-window", utc(2026, 10, 26, 1, 30)
    )


def test_a_two_hour_window_across_the_autumn_change_is_two_elapsed_hours() -> None:
    schedule = decode(
        {"windows": [{"cron": "0 1 * * *", "durationMinutes": 120, "timezone": "Europe/Berlin"}]}
    )
    # 01:00 CEST = 23:00 UTC the day before; two hours later is 01:00 UTC (02:00 CET).
    assert schedule_state(schedule, utc(2026, 10, 24, 23, 0)) == ScheduleState(
        None, utc(2026, 10, 25, 1, 0)
    )


def test_several_windows_and_end_at_cap_the_next_change() -> None:
    schedule = decode(
        {
            "endAt": "2026-06-01T12:10:00Z",
            "endBehavior": "cancel",
            "windows": [
                {"cron": "0 * * * *", "durationMinutes": 15},
                {"cron": "30 * * * *", "durationMinutes": 15},
            ],
        }
    )
    assert schedule_state(schedule, utc(2026, 6, 1, 10, 20)) == ScheduleState(
        "outside-window", utc(2026, 6, 1, 10, 30)
    )
    assert schedule_state(schedule, utc(2026, 6, 1, 10, 40)) == ScheduleState(
        None, utc(2026, 6, 1, 10, 45)
    )
    assert schedule_state(schedule, utc(2026, 6, 1, 12, 0)) == ScheduleState(
        None, utc(2026, 6, 1, 12, 10)
    )
    assert schedule.end_behavior == "cancel"


def test_start_at_inside_no_window_waits_outside_window() -> None:
    schedule = decode({"startAt": "2026-01-10T00:00:00Z", "windows": [NIGHTLY_BERLIN]})
    assert schedule_state(schedule, utc(2026, 1, 9)).hold == "scheduled"
    assert schedule_state(schedule, utc(2026, 1, 10)) == ScheduleState(
        "outside-window", utc(2026, 1, 10, 1, 30)
    )


@pytest.mark.parametrize(
    ("document", "names"),
    [
        ({"windows": [{"cron": "61 * * * *", "durationMinutes": 5}]}, "cron"),
        (
            {"windows": [{"cron": "0 * * * *", "durationMinutes": 5, "timezone": "Mars/Base"}]},
            "timezone",
        ),
        ({"windows": [{"cron": "0 * * * *", "durationMinutes": 0}]}, "durationMinutes"),
        ({"startAt": "2026-01-01T00:00:00"}, "startAt"),
        ({"startAt": "2026-01-02T00:00:00Z", "endAt": "2026-01-01T00:00:00Z"}, "endAt"),
        ({"endBehavior": "explode"}, "endBehavior"),
    ],
)
def test_invalid_schedules_are_refused_naming_the_field(
    document: dict[str, object], names: str
) -> None:
    with pytest.raises(msgspec.ValidationError, match=names):
        decode(document)
