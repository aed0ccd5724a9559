"""pm.dry_run: the plan of a job without sending it (pure; the route is tested end to end in
tests/integration/test_job_control.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from pm.dry_run import (
    ASSUMED_LATENCY,
    MAX_PREDICTED_DURATION,
    DestinationPresence,
    plan_dry_run,
    predict_duration,
)
from pm.presence import Presence
from pm.schedule import Schedule

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LATENCIES = {"a": 0.5, "b": 2.0}


def test_one_device_works_on_its_tasks_one_after_another() -> None:
    # b has 3 tasks of 2 s each: 6 s, the longest device; a's 2 take 1 s alongside.
    assert predict_duration({"a": 2, "b": 3}, LATENCIES.get) == (6.0, 2)


def test_unknown_latencies_take_the_assumed_one() -> None:
    assert predict_duration({"x": 4}, LATENCIES.get) == (4 * ASSUMED_LATENCY, 0)


def test_the_window_shares_the_device_time() -> None:
    # 100 devices x 1 task x 1 s = 100 device-seconds, 10 at a time: 10 s.
    tasks = {f"d{n}": 1 for n in range(100)}
    assert predict_duration(tasks, lambda device: 1.0, max_in_flight=10) == (10.0, 100)


def test_the_rate_bounds_when_it_is_the_slowest() -> None:
    tasks = {f"d{n}": 1 for n in range(121)}
    # 121 sends at 60 a minute: the last leaves 120 s after the first.
    duration, _ = predict_duration(tasks, lambda device: 0.1, max_in_flight=50, max_per_minute=60)
    assert duration == pytest.approx(120.0)


def test_plan_counts_tasks_devices_and_presence() -> None:
    presence = {"a": Presence.ONLINE, "b": Presence.OFFLINE}
    plan = plan_dry_run(
        [["a", "b", "c"], ["a"]],
        presence_of=lambda device: presence.get(device, Presence.UNKNOWN),
        latency_of=LATENCIES.get,
        now=NOW,
    )
    assert (plan.total_count, plan.device_count) == (4, 3)
    assert plan.destinations == DestinationPresence(online=1, offline=1, unknown=1)
    assert plan.predicted_duration == 2.0 and plan.latencies_known == 2
    assert plan.starts_at is None
    assert "1 s assumed for the other 1" in plan.basis
    assert msgspec.json.decode(msgspec.json.encode(plan))["dryRun"] is True


def test_plan_says_when_the_schedule_first_lets_it_send() -> None:
    schedule = msgspec.convert(
        {
            "startAt": "2026-12-01T13:00:00Z",
            "windows": [{"cron": "0 2 * * *", "durationMinutes": 60, "timezone": "UTC"}],
        },
        Schedule,
    )
    plan = plan_dry_run(
        [["a"]],
        presence_of=lambda d: Presence.ONLINE,
        latency_of=LATENCIES.get,
        now=NOW,
        schedule=schedule,
    )
    assert plan.starts_at == "2026-12-02T02:00:00.000Z"


def test_an_absurdly_slow_rate_predicts_a_capped_finite_duration() -> None:
    # Found by schemathesis: 5e-324 sends a minute made the prediction infinite (JSON null).
    tasks = {"a": 1, "b": 1, "c": 1}
    duration, _ = predict_duration(tasks, LATENCIES.get, max_per_minute=5e-324)
    assert duration == MAX_PREDICTED_DURATION
