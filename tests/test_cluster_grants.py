"""A paced job's grants across a cluster (pm/cluster/_grants.py) and the pacer of a shard's
part that spends them (pm/shard_pacing.py:GrantPacer), without a database: a model of a
job's shards whose commits lag, whose owners change, and whose coordinator rounds come and
go, checked against the window at every step."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest

from pm.cluster._grants import ShardGrant, grant_round
from pm.job_options import RampOptions, RolloutOptions
from pm.rollout import Pacer, RolloutState, ramp_steps_after
from pm.shard_pacing import GrantPacer

UNSENT, SENT, FINAL = "unsent", "sent", "final"


def shard(number: int, total: int, unfinished: int, granted: int = 0, at: float = -math.inf):
    return ShardGrant(number, total, unfinished, granted, at)


def test_the_first_round_spreads_the_window_over_the_shards_with_the_most_work_first() -> None:
    shards = [shard(0, 2, 2), shard(1, 9, 9), shard(2, 5, 5), shard(3, 1, 1), shard(4, 0, 0)]
    decided = grant_round(
        RolloutOptions(max_in_flight=3), shards, resolved=0, rate_anchor=None, now=100.0
    )
    assert decided.grants == {1: 1, 2: 1, 0: 1}
    assert decided.limited_by == "rollout-window"
    assert (decided.window, decided.rate, decided.rate_anchor) == (3, None, None)


def test_room_held_counts_against_the_window_and_finals_free_it() -> None:
    options = RolloutOptions(max_in_flight=4)
    # Shard 0: 3 granted, 1 final: room 2. Shard 1: 2 granted, 2 final: room 0.
    shards = [shard(0, 10, 9, granted=3, at=5.0), shard(1, 10, 8, granted=2, at=6.0)]
    decided = grant_round(options, shards, resolved=3, rate_anchor=None, now=10.0)
    # Room 2 left; shard 1 holds none, so it goes first, then the turns alternate.
    assert decided.grants == {1: 4}  # two more than its finals
    shards = [shard(0, 10, 9, granted=3, at=5.0), shard(1, 10, 8, granted=4, at=10.0)]
    assert grant_round(options, shards, resolved=3, rate_anchor=None, now=11.0).grants == {}


def test_a_shard_whose_tasks_ended_unsent_gets_grants_above_its_finals() -> None:
    # 5 of its tasks expired before any grant: a grant of 1 would let nothing go.
    decided = grant_round(
        RolloutOptions(max_in_flight=2), [shard(0, 8, 3)], resolved=0, rate_anchor=None, now=1.0
    )
    assert decided.grants == {0: 7}


def test_grants_never_exceed_the_tasks_of_a_shard() -> None:
    decided = grant_round(
        RolloutOptions(max_in_flight=50),
        [shard(0, 3, 3), shard(1, 2, 1, granted=1)],
        resolved=1,
        rate_anchor=None,
        now=1.0,
    )
    assert decided.grants == {0: 3, 1: 2}
    assert decided.limited_by is None


def test_a_shard_with_little_work_is_not_starved_by_one_with_much() -> None:
    options = RolloutOptions(max_in_flight=1)
    big, small = shard(0, 100, 100), shard(1, 1, 1)
    first = grant_round(options, [big, small], resolved=0, rate_anchor=None, now=1.0)
    assert first.grants == {0: 1}  # the most work first
    # Its task settles: the one that waited longest goes next, not the one with most work.
    big = shard(0, 100, 99, granted=1, at=1.0)
    second = grant_round(options, [big, small], resolved=1, rate_anchor=None, now=2.0)
    assert second.grants == {1: 1}


def test_grants_accrue_at_the_rate_and_idle_time_is_not_saved_up() -> None:
    options = RolloutOptions(max_per_minute=60)  # one a second
    granted, anchor, now = {0: 0, 1: 0}, None, 100.0
    for _ in range(200):  # rounds every 0.05 s for 10 s
        now += 0.05
        rows = [shard(s, 1000, 1000, granted=granted[s]) for s in (0, 1)]
        decided = grant_round(options, rows, resolved=0, rate_anchor=anchor, now=now, catch_up=0.1)
        granted.update(decided.grants)
        anchor = decided.rate_anchor
    # At most 10 s * 1/s + 1, and no fewer than the rate allows.
    assert 10 <= sum(granted.values()) <= 11
    assert decided.limited_by == "rollout-rate"
    # A minute without rounds (nothing to grant, or no coordinator): one send, not sixty.
    rows = [shard(s, 1000, 1000, granted=granted[s]) for s in (0, 1)]
    later = grant_round(options, rows, resolved=0, rate_anchor=anchor, now=now + 60, catch_up=0.1)
    assert sum(later.grants.values()) - sum(granted[s] for s in later.grants) == 1


def test_the_ramp_grows_window_and_rate_from_the_job_wide_count_of_resolved_tasks() -> None:
    options = RolloutOptions(
        max_in_flight=2,
        max_per_minute=600,
        ramp=RampOptions(factor=2, after_succeeded=10, max_in_flight=8),
    )
    steps = [ramp_steps_after(options, resolved) for resolved in (0, 9, 10, 25, 30, 1000)]
    assert steps == [0, 0, 1, 2, 2, 2]
    decided = grant_round(options, [shard(0, 100, 80)], resolved=20, rate_anchor=None, now=1.0)
    assert (decided.ramp_steps, decided.window, decided.rate) == (2, 8, 2400)
    # The same steps as a single gateway's pacer taking the outcomes one at a time.
    state = RolloutState()
    pacer = Pacer(options, state)
    for _ in range(1000):
        pacer.on_handed_out(0.0)
        pacer.on_settled(True)
    assert state.ramp_steps == ramp_steps_after(options, 1000)


# -- the model: shards that spend grants, commit late, change owners --------------------------


@dataclass
class Part:
    """What a shard's owner holds of the job's part (as a ShardJob's record would)."""

    tasks: list[int]  # the task numbers unfinished at adoption
    done_count: int = 0


@dataclass
class ModelShard:
    number: int
    states: list[str]  # the truth, per task
    committed: list[str]  # what the database holds
    part: Part = field(init=False)
    pacer: GrantPacer = field(init=False)
    handed: set[int] = field(default_factory=set)  # by the current owner, not back

    def adopt(self, options: RolloutOptions, stored_grant: int | None) -> None:
        """A new owner: what was not committed is lost (the old owner was fenced or died);
        tasks committed as sent are held as in flight and re-sent."""
        self.states = list(self.committed)
        unfinished = [n for n, state in enumerate(self.states) if state != FINAL]
        self.part = Part(unfinished)
        self.pacer = GrantPacer(options, RolloutState(), self.part)  # type: ignore[arg-type]
        self.handed = set()
        if stored_grant is not None:
            self.pacer.grant(stored_grant, len(self.states))
        for n in unfinished:
            if self.states[n] == SENT:
                self.pacer.on_handed_out(0.0)
                self.handed.add(n)

    @property
    def in_flight(self) -> int:
        return self.states.count(SENT)


def run_model(seed: int, options: RolloutOptions) -> tuple[int, int]:
    """Random steps of a job over 5 shards, checking after each that the tasks in flight
    are within the window of the last coordinator round (a ramp only grows it); returns
    (the most in flight at once, tasks final)."""
    rng = random.Random(seed)
    sizes = [rng.randrange(0, 40) for _ in range(5)]
    shards = [ModelShard(n, [UNSENT] * size, [UNSENT] * size) for n, size in enumerate(sizes)]
    stored: dict[int, tuple[int, float]] = {}  # shard -> (granted, granted_at)
    anchor: float | None = None
    for model in shards:
        model.adopt(options, None)
    most, now, window = 0, 1000.0, options.max_in_flight
    for _ in range(4000):
        now += 0.01
        model = rng.choice(shards)
        action = rng.random()
        if action < 0.3:  # the owner hands out its next task if its pacer lets it
            waiting = [n for n, state in enumerate(model.states) if state == UNSENT]
            waiting = [n for n in waiting if n not in model.handed]
            if waiting and model.pacer.blocked(now) is None:
                model.states[waiting[0]] = SENT
                model.handed.add(waiting[0])
                model.pacer.on_handed_out(now)
        elif action < 0.5:  # an answer settles a task in flight
            sent = [n for n, state in enumerate(model.states) if state == SENT]
            if sent:
                n = rng.choice(sent)
                model.states[n] = FINAL
                model.part.done_count += 1
                model.handed.discard(n)
                model.pacer.on_settled(True)
        elif action < 0.53:  # a task expires before it could be sent
            waiting = [n for n, state in enumerate(model.states) if state == UNSENT]
            if waiting:
                model.states[rng.choice(waiting)] = FINAL
                model.part.done_count += 1
        elif action < 0.7:  # the owner's commit
            model.committed = list(model.states)
        elif action < 0.85:  # a coordinator round (on whichever gateway: all is stored)
            rows = [
                ShardGrant(
                    m.number,
                    len(m.committed),
                    sum(state != FINAL for state in m.committed),
                    *stored.get(m.number, (0, -math.inf)),
                )
                for m in shards
                if m.committed
            ]
            resolved = sum(m.committed.count(FINAL) for m in shards)
            decided = grant_round(options, rows, resolved=resolved, rate_anchor=anchor, now=now)
            anchor, window = decided.rate_anchor, decided.window
            for number, granted in decided.grants.items():
                stored[number] = (granted, now)
            held = sum(max(0, stored.get(r.shard, (0,))[0] - r.final) for r in rows)
            assert window is None or held <= window
        elif action < 0.97:  # an owner reads its grant
            if model.number in stored:
                model.pacer.grant(stored[model.number][0], len(model.states))
        else:  # the shard moves: a join, a rebalance, or its owner SIGKILLed
            model.adopt(options, stored.get(model.number, (None,))[0])
        in_flight = sum(m.in_flight for m in shards)
        assert window is not None and in_flight <= window, (seed, in_flight, window)
        most = max(most, in_flight)
    return most, sum(m.states.count(FINAL) for m in shards)


@pytest.mark.parametrize("seed", range(12))
def test_job_wide_in_flight_never_exceeds_the_window(seed: int) -> None:
    most, final = run_model(seed, RolloutOptions(max_in_flight=3))
    assert final > 0


def test_the_model_uses_the_whole_window() -> None:
    # Not a model that only stays below the window by sending nothing.
    assert max(run_model(seed, RolloutOptions(max_in_flight=3))[0] for seed in range(12)) == 3


@pytest.mark.parametrize("seed", range(6))
def test_a_ramped_window_holds_at_its_current_size(seed: int) -> None:
    options = RolloutOptions(
        max_in_flight=1, ramp=RampOptions(factor=2, after_succeeded=5, max_in_flight=4)
    )
    most, _ = run_model(seed, options)
    assert most <= 4
