"""A job's schedule: when it may send, as a pure function of the instant asked about.

``"schedule": {"startAt", "endAt", "endBehavior", "windows": [{"cron", "durationMinutes",
"timezone"}]}``: the job sends nothing before ``startAt``; with windows it sends only inside
one (a window opens at each instant its cron expression names, in its own time zone, and
stays open ``durationMinutes`` of elapsed time); at ``endAt`` it pauses or cancels
(``endBehavior``). The job actor asks :func:`schedule_state` at an instant, sets or clears
its schedule hold from the answer, and asks again at the answer's ``until``: no state is
kept here, so a gateway restarted at any moment recomputes the same answer from the stored
schedule and the clock.

Cron expressions are read by ``cronsim`` (five fields, evaluated in the window's time zone
by ``zoneinfo``). Daylight-saving time, as cron does it: a start that falls in the hour
skipped in spring fires at the first valid minute after it (``30 2 * * *`` in Berlin fires
at 03:00 that day); a start in the hour repeated in autumn fires once, at its first
occurrence. Durations are elapsed time (UTC arithmetic), so a two-hour window is two hours
long across a change. ``tests/test_schedule.py`` checks both Europe/Berlin changes.

Error handling: an invalid cron expression or unknown time zone raises ``ValueError`` from
the Struct's ``__post_init__``, which msgspec reports as a validation error at the field's
path (a 400 naming it); nothing else here raises.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from cronsim import CronSim, CronSimError

# One week: a window longer than the week between two starts of a weekly cron is one that
# never closes, which is what no schedule at all says.
MAX_WINDOW_MINUTES = 7 * 24 * 60

AwareDatetime = Annotated[
    datetime,
    msgspec.Meta(
        tz=True, description="an RFC 3339 date-time with its offset, e.g. 2026-12-01T02:00:00Z"
    ),
]
EndBehavior = Literal["pause", "cancel"]
#: Why a scheduled job sends nothing now (``None``: it may send).
ScheduleHold = Literal["scheduled", "outside-window", "ended"]


class ScheduleWindow(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A recurring window in which the job may send."""

    cron: Annotated[
        str, msgspec.Meta(description="five cron fields, e.g. '0 2 * * *' (02:00 every day)")
    ]
    duration_minutes: Annotated[
        int,
        msgspec.Meta(ge=1, le=MAX_WINDOW_MINUTES, description="minutes the window stays open"),
    ] = msgspec.field(name="durationMinutes")
    timezone: Annotated[
        str, msgspec.Meta(description="an IANA time zone, e.g. Europe/Berlin; default UTC")
    ] = "UTC"

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: unknown time zone {self.timezone!r}") from None
        try:
            CronSim(self.cron, datetime(2000, 1, 1, tzinfo=self.zone))
        except CronSimError as error:
            raise ValueError(f"cron: {self.cron!r} is not a cron expression ({error})") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # zoneinfo caches one instance per key

    def latest_start(self, now: datetime) -> datetime | None:
        """The latest start at or before ``now`` (UTC), ``None`` if the cron never fired."""
        # cronsim counts from the second after a start it is given; one second later makes a
        # start at exactly ``now`` count as at or before it.
        origin = now.astimezone(self.zone).replace(microsecond=0) + timedelta(seconds=1)
        try:
            return next(CronSim(self.cron, origin, reverse=True)).astimezone(UTC)
        except StopIteration:
            return None

    def next_start(self, now: datetime) -> datetime | None:
        """The first start strictly after ``now`` (UTC), ``None`` if there is none."""
        try:
            return next(CronSim(self.cron, now.astimezone(self.zone))).astimezone(UTC)
        except StopIteration:
            return None

    def open_until(self, now: datetime) -> datetime | None:
        """When the window that holds ``now`` closes (UTC), ``None`` if ``now`` is outside."""
        start = self.latest_start(now)
        if start is None:
            return None
        end = start + timedelta(minutes=self.duration_minutes)
        return end if now < end else None


class Schedule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """When a job may send (every field optional)."""

    start_at: AwareDatetime | None = msgspec.field(default=None, name="startAt")
    end_at: AwareDatetime | None = msgspec.field(default=None, name="endAt")
    end_behavior: EndBehavior = msgspec.field(default="pause", name="endBehavior")
    windows: list[ScheduleWindow] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.start_at is not None and self.end_at is not None and self.end_at <= self.start_at:
            raise ValueError("endAt: must be later than startAt")


# The job request's field, as the OpenAPI document describes it.
SCHEDULE_DOC = msgspec.Meta(
    description="when the job may send: not before startAt, only inside its cron windows, and "
    "at endAt it pauses or cancels (endBehavior)",
    examples=[
        {
            "startAt": "2026-12-01T00:00:00Z",
            "windows": [{"cron": "0 2 * * *", "durationMinutes": 120, "timezone": "Europe/Berlin"}],
        }
    ],
)


class ScheduleState(msgspec.Struct, frozen=True):
    """What the schedule says at an instant.

    ``hold``: why the job may not send (``None``: it may). ``until``: the next instant the
    answer may change (ask again then), ``None`` if it never will.
    """

    hold: ScheduleHold | None
    until: datetime | None


def _earliest(*instants: datetime | None) -> datetime | None:
    known = [instant for instant in instants if instant is not None]
    return min(known) if known else None


def schedule_state(schedule: Schedule, now: datetime) -> ScheduleState:
    """May a job with ``schedule`` send at ``now`` (an aware datetime), and until when."""
    now = now.astimezone(UTC)
    end_at = schedule.end_at
    if end_at is not None and now >= end_at:
        return ScheduleState("ended", None)
    if schedule.start_at is not None and now < schedule.start_at:
        return ScheduleState("scheduled", schedule.start_at)
    if not schedule.windows:
        return ScheduleState(None, end_at)
    open_ends = [end for window in schedule.windows if (end := window.open_until(now))]
    if open_ends:
        # Open at least until the last of the windows holding now closes (another window
        # opening meanwhile is found when asked again then).
        return ScheduleState(None, _earliest(max(open_ends), end_at))
    next_starts = [start for window in schedule.windows if (start := window.next_start(now))]
    return ScheduleState("outside-window", _earliest(*next_starts, end_at))


def epoch_to_datetime(epoch_seconds: float) -> datetime:
    """Wall-clock epoch seconds as an aware UTC datetime (the job actor's clock is epochs)."""
    return datetime.fromtimestamp(epoch_seconds, UTC)
