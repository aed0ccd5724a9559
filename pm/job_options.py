"""A job's rollout options on the wire (``POST /jobs``) and their live status in the job view.

All are optional: a job without them is sent as fast as its devices take it (the seed's
behaviour). The policy they describe is applied by :mod:`pm.rollout` (pure) and
:mod:`pm.jobs` (the job actor); the options are stored with the job as one JSON document
(:class:`JobOptions`), so a resumed job keeps them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Priority = Literal["high", "normal"]
#: What an abort criterion counts: an outcome status, or ``failed`` (any but ``resolved``).
AbortOn = Literal["error", "timeout", "expired", "failed"]
AbortAction = Literal["pause", "cancel"]
RetryOn = Literal["error", "timeout"]
#: Why a job sends nothing new: paused (by a user or an abort criterion), or its schedule.
HoldReason = Literal["paused", "scheduled", "outside-window"]

MAX_RETRIES = 10
MAX_ABORT_CRITERIA = 10

PositiveCount = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


class RampOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Each time ``afterSucceeded`` more tasks resolve, the window and the rate are multiplied
    by ``factor``, until the window reaches ``maxInFlight`` (the rate stops growing then too)."""

    factor: Annotated[float, msgspec.Meta(gt=1, le=100, description="> 1")]
    after_succeeded: PositiveCount = msgspec.field(name="afterSucceeded")
    max_in_flight: PositiveCount = msgspec.field(name="maxInFlight")


class RolloutOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """At most ``maxInFlight`` of the job's tasks handed to their devices and not settled;
    at most ``maxPerMinute`` sends a minute, evenly spaced (never a burst per minute)."""

    max_in_flight: PositiveCount | None = msgspec.field(default=None, name="maxInFlight")
    max_per_minute: Annotated[float, msgspec.Meta(gt=0, le=6_000_000)] | None = msgspec.field(
        default=None, name="maxPerMinute"
    )
    ramp: RampOptions | None = None

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

    on: AbortOn
    threshold_percent: Annotated[float, msgspec.Meta(gt=0, le=100)] = msgspec.field(
        name="thresholdPercent"
    )
    min_settled: PositiveCount = msgspec.field(default=1, name="minSettled")
    action: AbortAction = "cancel"


class RetryOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A failed attempt is sent again, at most ``max`` times, after ``delay * factor**(n-1)``
    seconds (at most ``maxDelay``), shortened by up to ``jitter`` of itself at random."""

    on: Annotated[list[RetryOn], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["error", "timeout"]
    )
    # Only errors with one of these answer codes are retried (null: any error code).
    codes: (
        Annotated[list[Annotated[int, msgspec.Meta(ge=100, le=999)]], msgspec.Meta(min_length=1)]
        | None
    ) = None
    max: Annotated[int, msgspec.Meta(ge=0, le=MAX_RETRIES)] = 3
    delay: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 1.0
    factor: Annotated[float, msgspec.Meta(ge=1, le=100)] = 2.0
    max_delay: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = msgspec.field(
        default=300.0, name="maxDelay"
    )
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


class JobOptions(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Everything a job was asked to do beyond its batch: stored with the job as JSON."""

    rollout: RolloutOptions | None = None
    abort: list[AbortCriterion] | None = None
    retry: RetryOptions | None = None
    priority: Priority = "normal"

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
    """An earlier attempt of a task that was retried: the request id it went out with and
    what it became."""

    attempt: int
    request_id: int
    status: str
    result: Any = None
    finish_at: str | None = None
