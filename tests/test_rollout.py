"""The pure rollout policy (pm/rollout.py): exact figures, no trio, no clock."""

from __future__ import annotations

import random
import re

import msgspec
import pytest

from pm.http.openapi import build_openapi
from pm.job_options import AbortCriterion, RampOptions, RetryOptions, RolloutOptions
from pm.rollout import AbortWatch, Pacer, RolloutState, retry_delay, should_retry
from pm.schemas import JobRequest
from pm.state import RETRY_ID_STRIDE
from tests.stores import job_on_devices


def test_the_window_is_never_exceeded_and_frees_a_place_per_settled_task() -> None:
    pacer = Pacer(RolloutOptions(max_in_flight=5), RolloutState())
    handed_out = 0
    while pacer.blocked(0.0) is None:
        pacer.on_handed_out(0.0)
        handed_out += 1
    assert handed_out == 5 and pacer.blocked(0.0) == "rollout-window"
    pacer.on_settled(resolved=False)
    assert pacer.blocked(0.0) is None
    pacer.on_handed_out(0.0)
    assert pacer.blocked(0.0) == "rollout-window" and pacer.in_flight == 5


def test_the_rate_is_evenly_spaced_and_exact_over_a_minute() -> None:
    pacer = Pacer(RolloutOptions(max_per_minute=600), RolloutState())
    now, sends = 0.0, []
    while now < 60.0:
        if pacer.blocked(now) is None:
            pacer.on_handed_out(now)
            sends.append(now)
        else:
            assert pacer.blocked(now) == "rollout-rate"
            now = pacer.next_send_at
    assert len(sends) == 600  # within 2% asks for 588..612: it is exact
    gaps = {round(b - a, 9) for a, b in zip(sends, sends[1:], strict=False)}
    assert gaps == {0.1}  # smooth: never a burst


def test_idle_time_is_not_saved_up_for_a_burst() -> None:
    pacer = Pacer(RolloutOptions(max_per_minute=60), RolloutState())
    pacer.on_handed_out(0.0)
    # Nothing sent for 100 s: the next send is allowed at once, the one after 1 s later.
    assert pacer.blocked(100.0) is None
    pacer.on_handed_out(100.0)
    assert pacer.blocked(100.5) == "rollout-rate" and pacer.next_send_at == 101.0


def test_the_ramp_grows_window_and_rate_by_its_factor_up_to_its_cap() -> None:
    options = RolloutOptions(
        max_in_flight=2,
        max_per_minute=60,
        ramp=RampOptions(factor=2, after_succeeded=3, max_in_flight=10),
    )
    state = RolloutState()
    pacer = Pacer(options, state)
    steps = []
    for _ in range(15):
        pacer.on_handed_out(0.0)
        pacer.on_settled(resolved=True)
        steps.append((pacer.window, pacer.rate))
    # Every 3 resolved: 2 -> 4 -> 8 -> 10 (the cap), the rate 60 -> 120 -> 240 -> 480.
    assert steps[2] == (4, 120) and steps[5] == (8, 240) and steps[8] == (10, 480)
    assert steps[14] == (10, 480) and state.ramp_steps == 3
    # Failed outcomes never grow it.
    pacer = Pacer(options, RolloutState())
    for _ in range(10):
        pacer.on_handed_out(0.0)
        pacer.on_settled(resolved=False)
    assert pacer.window == 2
    # A restart resumes where the ramp was.
    assert Pacer(options, state).window == 10


def test_a_small_window_with_a_small_factor_still_grows() -> None:
    options = RolloutOptions(
        max_in_flight=1, ramp=RampOptions(factor=1.1, after_succeeded=1, max_in_flight=3)
    )
    pacer = Pacer(options, RolloutState())
    windows = []
    for _ in range(3):
        pacer.on_handed_out(0.0)
        pacer.on_settled(resolved=True)
        windows.append(pacer.window)
    assert windows == [2, 3, 3]


def test_abort_waits_for_the_minimum_sample() -> None:
    watch = AbortWatch(
        [AbortCriterion(on="error", threshold_percent=5, min_settled=20)], RolloutState()
    )
    assert [watch.on_outcome("error") for _ in range(19)] == [None] * 19
    assert watch.on_outcome("error") == 0  # the 20th outcome: 100% >= 5%


def test_abort_trips_at_exactly_the_threshold() -> None:
    state = RolloutState()
    watch = AbortWatch([AbortCriterion(on="error", threshold_percent=5, min_settled=20)], state)
    for _ in range(95):
        assert watch.on_outcome("resolved") is None
    for _ in range(4):
        assert watch.on_outcome("error") is None  # 4 of 99: 4.04%
    assert watch.on_outcome("error") == 0  # 5 of 100: exactly 5%
    (status,) = watch.status()
    assert (status.matching, status.settled, status.percent, status.tripped) == (5, 100, 5.0, True)
    assert state.tripped == [0]
    assert watch.on_outcome("error") is None  # a tripped criterion trips once


def test_failed_counts_every_outcome_but_resolved_and_outcomes_are_restored() -> None:
    criteria = [
        AbortCriterion(on="failed", threshold_percent=50, min_settled=4),
        AbortCriterion(on="timeout", threshold_percent=100, min_settled=1, action="pause"),
    ]
    watch = AbortWatch(criteria, RolloutState(), ["resolved", "expired", "timeout"])
    assert [s.matching for s in watch.status()] == [2, 1]
    assert watch.status()[0].settled == 3 and not watch.status()[1].tripped
    assert watch.on_outcome("resolved") == 0  # 2 of 4 failed: 50%


def test_backoff_doubles_up_to_max_delay_within_its_jitter() -> None:
    options = RetryOptions(max=6, delay=1, factor=2, max_delay=10, jitter=0.5)
    rng = random.Random(12)
    for attempts, base in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (6, 10)]:
        waits = [retry_delay(options, attempts, rng.random) for _ in range(200)]
        assert all(base * 0.5 <= wait <= base for wait in waits)
        assert min(waits) < base * 0.55 and max(waits) > base * 0.95  # the jitter is used
    no_jitter = RetryOptions(delay=1.5, factor=3, max_delay=100)
    assert [retry_delay(no_jitter, n, rng.random) for n in (1, 2, 3, 4)] == [1.5, 4.5, 13.5, 40.5]


def test_which_attempts_are_retried() -> None:
    options = RetryOptions(on=["error"], codes=[503], max=2)
    assert should_retry(options, "error", {"code": 503}, attempts=1)
    assert should_retry(options, "error", {"code": 503}, attempts=2)
    assert not should_retry(options, "error", {"code": 503}, attempts=3)  # max retries spent
    assert not should_retry(options, "error", {"code": 404}, attempts=1)  # not a listed code
    assert not should_retry(options, "timeout", None, attempts=1)  # not in `on`
    assert should_retry(RetryOptions(), "timeout", None, attempts=1)


def test_a_retry_goes_out_with_its_own_request_id() -> None:
    job = job_on_devices(1)
    (task,) = job.tasks
    assert task.request_id == task.id  # the first attempt: the task id
    job.mark_sent(task, 10.0)
    assert task.request_id == task.id  # sent: re-sent (after a reconnect) with the same id
    job.retry_later(task, "error", {"code": 503}, 10.0, 11.0)
    assert task.request_id == task.id + RETRY_ID_STRIDE  # the retry: a new one
    job.mark_sent(task, 10.0)
    assert task.request_id == task.id + RETRY_ID_STRIDE and task.attempts == 2
    assert [a.request_id for a in task.previous_attempts or []] == [task.id]


@pytest.mark.parametrize(
    ("rollout", "message"),
    [
        (
            {"ramp": {"factor": 2, "afterSucceeded": 1, "maxInFlight": 5}},
            "needs rollout.maxInFlight",
        ),
        (
            {"maxInFlight": 10, "ramp": {"factor": 2, "afterSucceeded": 1, "maxInFlight": 5}},
            "rollout.ramp.maxInFlight (5) is below rollout.maxInFlight (10)",
        ),
    ],
)
def test_an_inconsistent_ramp_is_refused_naming_the_fields(rollout: object, message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(rollout, RolloutOptions)


def test_openapi_documents_every_rollout_field_with_an_example_and_examples_are_valid() -> None:
    document = build_openapi()
    schemas = document["components"]["schemas"]
    for name in ("RolloutOptions", "RampOptions", "AbortCriterion", "RetryOptions"):
        for field, schema in schemas[name]["properties"].items():
            assert schema.get("description") and schema.get("examples"), (name, field)
    for field in ("rollout", "abort", "retry", "priority"):
        schema = schemas["JobRequest"]["properties"][field]
        assert schema.get("description") and schema.get("examples"), field
    examples = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ]
    assert {"rollout", "abort", "retry", "priority"} <= set(examples)
    for example in examples.values():
        msgspec.convert(example["value"], JobRequest)  # every example is a valid body
    # The job view documents what a rollout shows.
    assert {"retriedCount", "holds", "rollout", "abort", "stoppedBy"} <= set(
        schemas["JobView"]["properties"]
    )
    assert {"attempts", "nextAttemptAt", "previousAttempts"} <= set(
        schemas["TaskState"]["properties"]
    )
