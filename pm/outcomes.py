"""A job's outcome histogram, summary and ETA, counted as tasks settle (O(1) per task).

:class:`OutcomeCounter` is fed each final task once, by :class:`pm.state.JobRecord`; the
view copies its few keys, so no report ever walks the job's tasks. A restored job refeeds it
from its stored tasks (their answer codes are stored with them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:  # pm.schemas imports this module for the job view's fields
    from .schemas import TaskStatus

# A finished job's summary: every task resolved, none did, or some did (null until final).
JobOutcome = Literal["succeeded", "failed", "partial"]
JOB_OUTCOMES: tuple[JobOutcome, ...] = ("succeeded", "failed", "partial")


class OutcomeHistogram(msgspec.Struct, kw_only=True):
    """How a job's final tasks ended. ``resolved`` and ``error`` count by the device's answer
    code (a string key, as JSON objects need; ``"unknown"`` for a task that ended without an
    answer code, e.g. one resolved before the gateway stored codes)."""

    resolved: dict[str, int] = msgspec.field(default_factory=dict)
    error: dict[str, int] = msgspec.field(default_factory=dict)
    timeout: int = 0
    expired: int = 0
    cancelled: int = 0


def counts_by_status(outcomes: OutcomeHistogram) -> dict[str, int]:
    """How many final tasks have each final status (the abort criteria's counts)."""
    return {
        "resolved": sum(outcomes.resolved.values()),
        "error": sum(outcomes.error.values()),
        "timeout": outcomes.timeout,
        "expired": outcomes.expired,
        "cancelled": outcomes.cancelled,
    }


# The job view's fields, as the OpenAPI document describes them.
OUTCOMES_DOC = msgspec.Meta(
    description="final tasks by status, resolved and error ones by answer code; counted as "
    "tasks settle",
    examples=[
        {"resolved": {"200": 97}, "error": {"503": 2}, "timeout": 1, "expired": 0, "cancelled": 0}
    ],
)
OUTCOME_DOC = msgspec.Meta(
    description="null until final, then succeeded (every task resolved), failed (none did) or "
    "partial (GET /jobs?outcome=)",
    examples=["partial"],
)
ETA_DOC = msgspec.Meta(
    description="when the last task should settle at the rate observed so far (null before "
    "two settled, and once final)",
    examples=["2026-12-01T02:41:07.250Z"],
)

#: The histogram key of a task that ended without an answer code.
UNKNOWN_CODE = "unknown"
# Answer codes as histogram keys, made once each: real codes are a few dozen, and the cache
# stops growing at MAX_CACHED_CODES whatever devices answer.
MAX_CACHED_CODES = 1000
_CODE_KEYS: dict[int | None, str] = {}


class OutcomeCounter:
    """Counts of final task statuses, ``resolved`` and ``error`` split by answer code."""

    __slots__ = ("cancelled", "error", "expired", "resolved", "timeout")

    def __init__(self) -> None:
        self.resolved: dict[str, int] = {}
        self.error: dict[str, int] = {}
        self.timeout = 0
        self.expired = 0
        self.cancelled = 0

    def add(self, status: TaskStatus, code: int | None) -> None:
        """One task reached final ``status``; ``code`` is its answer's, if it had one."""
        if status == "resolved" or status == "error":
            by_code = self.resolved if status == "resolved" else self.error
            # On every settle: the key's string is made once per code, not once per task.
            key = _CODE_KEYS.get(code)
            if key is None:
                key = UNKNOWN_CODE if code is None else str(code)
                if len(_CODE_KEYS) < MAX_CACHED_CODES:  # a device may answer any integer
                    _CODE_KEYS[code] = key
            by_code[key] = by_code.get(key, 0) + 1
        elif status == "timeout":
            self.timeout += 1
        elif status == "expired":
            self.expired += 1
        elif status == "cancelled":
            self.cancelled += 1
        else:
            raise AssertionError(f"{status!r} is not a final task status")

    def histogram(self) -> OutcomeHistogram:
        return OutcomeHistogram(
            resolved=dict(self.resolved),
            error=dict(self.error),
            timeout=self.timeout,
            expired=self.expired,
            cancelled=self.cancelled,
        )


def summary_outcome(*, final: bool, total: int, resolved: int) -> JobOutcome | None:
    """``succeeded`` when every task resolved, ``failed`` when none did, ``partial``
    otherwise; ``None`` while the job is not final."""
    if not final:
        return None
    if resolved == total:
        return "succeeded"
    return "failed" if resolved == 0 else "partial"


class SettleRate:
    """The rate at which a job's tasks settle, from its first and latest settle."""

    __slots__ = ("first", "latest", "settled")

    def __init__(self) -> None:
        self.first: float | None = None
        self.latest = 0.0
        self.settled = 0

    @classmethod
    def of_settle_times(cls, times: Iterable[float]) -> SettleRate:
        """The rate of tasks that settled at ``times`` (any order): for a view of a job read
        from the store, whose tasks settled on several gateways (pm/cluster_engine.py)."""
        rate = cls()
        for moment in times:
            rate.first = moment if rate.first is None else min(rate.first, moment)
            rate.latest = max(rate.latest, moment)
            rate.settled += 1
        return rate

    def observe(self, now: float) -> None:
        """A task settled at ``now`` (epoch seconds)."""
        if self.first is None:
            self.first = now
        self.latest = now
        self.settled += 1

    def eta(self, remaining: int) -> float | None:
        """When ``remaining`` more tasks should have settled at the rate seen so far, from
        the latest settle; ``None`` until two tasks settled at different instants."""
        first = self.first
        if first is None or self.settled < 2 or self.latest <= first:
            return None
        return self.latest + remaining * (self.latest - first) / (self.settled - 1)
