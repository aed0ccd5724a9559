"""A job's rollout options on the wire (``POST /jobs``) and their live status in the job view.

All are optional: a job without them is sent as fast as its devices take it (the seed's
behaviour). The policy they describe is applied by :mod:`pm.rollout` (pure) and
:mod:`pm.jobs` (the job actor); the options are stored with the job as one JSON document
(:class:`JobOptions`), so a resumed job keeps them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .schedule import Schedule

Priority = Literal["high", "normal"]
#: What an abort criterion counts: an outcome status, or ``failed`` (any but ``resolved``).
AbortOn = Literal["error", "timeout", "expired", "failed"]
AbortAction = Literal["pause", "cancel"]
RetryOn = Literal["error", "timeout"]
#: Why a job sends nothing new: paused (by a user or an abort criterion), or its schedule.
HoldReason = Literal["paused", "scheduled", "outside-window"]

MAX_RETRIES = 10
MAX_ABORT_CRITERIA = 10


def field_doc(description: str, example: Any) -> msgspec.Meta:
    """A field's description and example in the OpenAPI document."""
    return msgspec.Meta(description=description, examples=[example])


Count = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=86_400)]


class RampOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Each time ``afterSucceeded`` more tasks resolve, the window and the rate are multiplied
    by ``factor``, until the window reaches ``maxInFlight`` (the rate stops growing then too)."""

    factor: Annotated[
        Annotated[float, msgspec.Meta(gt=1, le=100)], field_doc("growth per step, > 1", 2)
    ]
    after_succeeded: Annotated[Count, field_doc("tasks resolved per step", 100)] = msgspec.field(
        name="afterSucceeded"
    )
    max_in_flight: Annotated[Count, field_doc("the window's cap", 500)] = msgspec.field(
        name="maxInFlight"
    )


class RolloutOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """At most ``maxInFlight`` of the job's tasks handed to their devices and not settled;
    at most ``maxPerMinute`` sends a minute, evenly spaced (never a burst per minute)."""

    max_in_flight: Annotated[
        Count | None, field_doc("tasks handed to their devices and not settled, at most", 50)
    ] = msgspec.field(default=None, name="maxInFlight")
    max_per_minute: Annotated[
        Annotated[float, msgspec.Meta(gt=0, le=6_000_000)] | None,
        field_doc("sends per minute, evenly spaced", 600),
    ] = msgspec.field(default=None, name="maxPerMinute")
    ramp: Annotated[
        RampOptions | None,
        field_doc(
            "grow the window and the rate as tasks succeed",
            {"factor": 2, "afterSucceeded": 100, "maxInFlight": 500},
        ),
    ] = None

    def __post_init__(self) -> None:
        if self.ramp is None:
            return
        if self.max_in_flight is None:
            raise ValueError("rollout.ramp needs rollout.maxInFlight (the window it grows)")
        if self.ramp.max_in_flight < self.max_in_flight:
            raise ValueError(
                f"rollout.ramp.maxInFlight ({self.ramp.max_in_flight}) is below "
                f"rollout.maxInFlight ({self.max_in_flight})"
            )


class AbortCriterion(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Trips when at least ``minSettled`` tasks have an outcome and the share of those
    outcomes matching ``on`` is at least ``thresholdPercent``."""

    on: Annotated[
        AbortOn, field_doc("the outcome counted; failed: any final status but resolved", "error")
    ]
    threshold_percent: Annotated[
        Annotated[float, msgspec.Meta(gt=0, le=100)],
        field_doc("trips at this share of the outcomes, or more", 5),
    ] = msgspec.field(name="thresholdPercent")
    min_settled: Annotated[
        Count, field_doc("outcomes needed before it may trip (the denominator's minimum)", 100)
    ] = msgspec.field(default=1, name="minSettled")
    action: Annotated[
        AbortAction,
        field_doc(
            "pause: send nothing new; cancel: unsent tasks end cancelled, the job aborted", "cancel"
        ),
    ] = "cancel"


class RetryOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A failed attempt is sent again, at most ``max`` times, after ``delay * factor**(n-1)``
    seconds (at most ``maxDelay``), shortened by up to ``jitter`` of itself at random."""

    on: Annotated[
        Annotated[list[RetryOn], msgspec.Meta(min_length=1)],
        field_doc("attempt outcomes that are retried", ["error", "timeout"]),
    ] = msgspec.field(default_factory=lambda: ["error", "timeout"])
    codes: Annotated[
        Annotated[list[Annotated[int, msgspec.Meta(ge=100, le=999)]], msgspec.Meta(min_length=1)]
        | None,
        field_doc("only errors with one of these answer codes are retried (null: any)", [503, 504]),
    ] = None
    max: Annotated[
        Annotated[int, msgspec.Meta(ge=0, le=MAX_RETRIES)], field_doc("retries, at most", 3)
    ] = 3
    delay: Annotated[Seconds, field_doc("seconds before the first retry", 5)] = 1.0
    factor: Annotated[
        Annotated[float, msgspec.Meta(ge=1, le=100)],
        field_doc("each wait is this times the last", 2),
    ] = 2.0
    max_delay: Annotated[Seconds, field_doc("the longest wait, seconds", 300)] = msgspec.field(
        default=300.0, name="maxDelay"
    )
    jitter: Annotated[
        Annotated[float, msgspec.Meta(ge=0, le=1)],
        field_doc("each wait shortened at random by up to this share of it", 0.2),
    ] = 0.0


class JobOptions(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Everything a job was asked to do beyond its batch: stored with the job as JSON."""

    rollout: RolloutOptions | None = None
    abort: list[AbortCriterion] | None = None
    retry: RetryOptions | None = None
    priority: Priority = "normal"
    schedule: Schedule | None = None

    @property
    def paced(self) -> bool:
        """Whether the job's sending is paced or watched (a window, a rate, abort criteria or
        retries): the feeder then tracks what each task became."""
        return self.rollout is not None or bool(self.abort) or self.retry is not None


DEFAULT_OPTIONS = JobOptions()


# -- the job view --------------------------------------------------------------------------


class AbortStatus(msgspec.Struct, kw_only=True, rename="camel"):
    """One abort criterion, live: ``matching`` of ``settled`` outcomes (the denominator)."""

    on: AbortOn
    threshold_percent: float
    min_settled: int
    action: AbortAction
    matching: int
    settled: int
    # matching / settled * 100, null before any outcome.
    percent: float | None
    tripped: bool


class RolloutStatus(msgspec.Struct, kw_only=True, rename="camel"):
    """The job's pacing now: its current window and rate (after ramp steps), and the tasks
    counting against the window."""

    max_in_flight: int | None
    max_per_minute: float | None
    ramp_steps: int
    in_flight: int


class AttemptView(msgspec.Struct, kw_only=True, rename="camel"):
    """An earlier attempt of a task that was retried: the request id it went out with, how
    many copies of it were published (re-sends included) and what it became."""

    attempt: int
    request_id: int
    status: str
    result: Any = None
    finish_at: str | None = None
    # Stored before attempts kept their own count: 0, unknown.
    sends: int = 0
