"""Rollout policy as pure objects: the window and rate (with their ramp), the abort criteria,
and the retry backoff. No trio, no clock, no I/O: times are passed in (trio's clock for the
pacing, which never crosses a restart), and tests run them on exact figures.

The job actor (:mod:`pm.jobs`) owns one :class:`Pacer` and one :class:`AbortWatch` per job
and asks them before handing each task to its device; their durable part is
:class:`RolloutState`, stored with the job (a restart resumes the ramp and the trips where
they were; the rate restarts with one send allowed at once, which never exceeds it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from .job_options import (
    AbortCriterion,
    AbortStatus,
    RetryOptions,
    RolloutOptions,
    RolloutStatus,
)
from .schemas import WaitingReason


class RolloutState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What of a job's rollout survives a restart (stored as JSON with the job)."""

    ramp_steps: int = 0
    # Tasks resolved since the last ramp step.
    resolved_toward_step: int = 0
    tripped: list[int] = msgspec.field(default_factory=list)
    # The criterion that stopped or paused the job.
    stopped_by: int | None = None


def ramped(options: RolloutOptions, steps: int) -> tuple[int | None, float | None]:
    """The window and the rate of ``options`` after ``steps`` ramp steps."""
    ramp, window = options.ramp, options.max_in_flight
    if ramp is None or window is None:
        return window, options.max_per_minute
    for step in range(1, steps + 1):
        # At least one more per step: a small window with a small factor still grows.
        window = min(
            ramp.max_in_flight,
            max(window + 1, round(options.max_in_flight * ramp.factor**step)),
        )
    rate = options.max_per_minute
    return window, None if rate is None else rate * ramp.factor**steps


def ramp_steps_after(options: RolloutOptions, resolved: int) -> int:
    """The ramp steps a job has taken once ``resolved`` of its tasks resolved (what
    :class:`Pacer` counts one outcome at a time): one per ``afterSucceeded``, until the
    window reaches the ramp's cap."""
    ramp = options.ramp
    if ramp is None or options.max_in_flight is None:
        return 0
    steps = 0
    while resolved >= (steps + 1) * ramp.after_succeeded:
        window, _ = ramped(options, steps)
        if window is None or window >= ramp.max_in_flight:
            break
        steps += 1
    return steps


class Pacer:
    """The job's window (tasks handed out and not settled) and rate (sends per minute,
    evenly spaced), grown by the ramp.

    Args:
      options: the job's ``rollout``.
      state: the durable state (its ramp fields are read and written here).
    """

    def __init__(self, options: RolloutOptions, state: RolloutState) -> None:
        self._options = options
        self._state = state
        self.in_flight = 0
        self._next_send_at = -math.inf
        self.window: int | None = options.max_in_flight
        self.rate: float | None = options.max_per_minute
        self._apply_steps()

    def _apply_steps(self) -> None:
        self.window, self.rate = ramped(self._options, self._state.ramp_steps)

    def blocked(self, now: float) -> WaitingReason | None:
        """Why nothing may be handed out at ``now``, if so: the window first, then the rate."""
        if self.window is not None and self.in_flight >= self.window:
            return "rollout-window"
        if now < self._next_send_at:
            return "rollout-rate"
        return None

    @property
    def next_send_at(self) -> float:
        """When the rate next allows a send (``-inf``: now)."""
        return self._next_send_at

    def on_handed_out(self, now: float) -> None:
        """A task was handed to its device at ``now``."""
        self.in_flight += 1
        if self.rate is not None:
            # Spacing, not a bucket per minute: one send every 60/rate seconds; time left idle
            # is not saved up for a burst.
            self._next_send_at = max(self._next_send_at, now) + 60.0 / self.rate

    def on_returned(self) -> None:
        """A task handed out came back unsent (its job held sending when its turn came)."""
        self.in_flight -= 1

    def on_settled(self, resolved: bool) -> bool:
        """A task handed out has its outcome (or goes back to wait for a retry). Returns
        whether the ramp took a step."""
        self.in_flight -= 1
        ramp, state = self._options.ramp, self._state
        if not resolved or ramp is None or self.window is None:
            return False
        if self.window >= ramp.max_in_flight:
            return False
        state.resolved_toward_step += 1
        if state.resolved_toward_step < ramp.after_succeeded:
            return False
        state.resolved_toward_step = 0
        state.ramp_steps += 1
        self._apply_steps()
        return True

    def status(self) -> RolloutStatus:
        return RolloutStatus(
            max_in_flight=self.window,
            max_per_minute=self.rate,
            ramp_steps=self._state.ramp_steps,
            in_flight=self.in_flight,
        )


def matches(on: str, status: str) -> bool:
    """Whether an outcome ``status`` counts for an abort criterion ``on``."""
    return status != "resolved" if on == "failed" else status == on


class AbortWatch:
    """The job's abort criteria over its tasks' outcomes.

    Args:
      criteria: the job's ``abort`` list.
      state: the durable state (which criteria tripped, and which stopped the job).
      outcomes: the final statuses already reached (a resumed job's).
    """

    def __init__(
        self, criteria: list[AbortCriterion], state: RolloutState, outcomes: Iterable[str] = ()
    ) -> None:
        self.criteria = criteria
        self._state = state
        self.settled = 0
        self._matching = [0] * len(criteria)
        for status in outcomes:
            self._count(status)

    def _count(self, status: str) -> None:
        self.settled += 1
        for index, criterion in enumerate(self.criteria):
            if matches(criterion.on, status):
                self._matching[index] += 1

    def on_outcome(self, status: str) -> int | None:
        """A task has its outcome ``status``. Returns the index of the first criterion that
        trips now (one that tripped before never trips again), or ``None``."""
        self._count(status)
        tripped_now = None
        for index, criterion in enumerate(self.criteria):
            if index in self._state.tripped:
                continue
            if self.settled < criterion.min_settled:
                continue
            # Integer-exact for integral thresholds: matching / settled >= P / 100.
            if self._matching[index] * 100 >= criterion.threshold_percent * self.settled:
                self._state.tripped.append(index)
                if tripped_now is None:
                    tripped_now = index
        return tripped_now

    def status(self) -> list[AbortStatus]:
        settled = self.settled
        return [
            AbortStatus(
                on=criterion.on,
                threshold_percent=criterion.threshold_percent,
                min_settled=criterion.min_settled,
                action=criterion.action,
                matching=self._matching[index],
                settled=settled,
                percent=None if not settled else self._matching[index] * 100 / settled,
                tripped=index in self._state.tripped,
            )
            for index, criterion in enumerate(self.criteria)
        ]


def should_retry(options: RetryOptions, status: str, result: Any, attempts: int) -> bool:
    """Whether an attempt that ended ``status`` with ``result`` is sent again, after
    ``attempts`` attempts in all."""
    if attempts > options.max or status not in options.on:
        return False
    if status == "error" and options.codes is not None:
        code = result.get("code") if isinstance(result, dict) else None
        return code in options.codes
    return True


def retry_delay(options: RetryOptions, attempts: int, random: Callable[[], float]) -> float:
    """Seconds to wait before attempt ``attempts + 1``: ``delay * factor**(attempts-1)`` capped
    at ``maxDelay``, then shortened by ``jitter * random()`` of itself (``random`` in [0, 1)),
    so the wait lies in ``[(1 - jitter) * base, base]`` and never exceeds ``maxDelay``."""
    base = min(options.max_delay, options.delay * options.factor ** (attempts - 1))
    return base * (1.0 - options.jitter * random())
