"""The summing of a gateway's fleet counters (pm/fleet_counters.py), on stand-in fleets."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pm.fleet_counters import FleetCounters, RetiredFleets, sum_fleets


@dataclass
class CountedFleet:
    live_actors: int = 0
    in_flight: int = 0
    republished: int = 0
    published: int = 0
    answered: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


def test_one_fleet_reads_as_itself() -> None:
    fleet = CountedFleet(2, 1, 3, 7, 6, Counter(malformed=1))
    assert sum_fleets([fleet], None) == FleetCounters(
        live_actors=2,
        in_flight=1,
        published=7,
        answered=6,
        republished=3,
        dropped={"malformed": 1},
    )


def test_fleets_add_up_and_retired_ones_keep_only_their_cumulative_counters() -> None:
    engine_fleet = CountedFleet(dropped=Counter(shard_not_served=4))
    served = CountedFleet(live_actors=3, in_flight=2, published=10, answered=8, republished=1)
    moved_away = CountedFleet(
        live_actors=5, in_flight=1, published=20, answered=19, dropped=Counter(malformed=2)
    )
    retired = RetiredFleets()
    retired.retire(moved_away)
    counters = sum_fleets([engine_fleet, served], retired)
    # In flight and live actors end with the fleet; what it counted stays.
    assert counters == FleetCounters(
        live_actors=3,
        in_flight=2,
        published=30,
        answered=27,
        republished=1,
        dropped={"shard_not_served": 4, "malformed": 2},
    )
    # The retired fleet's later changes (none should come) are not read: its counts were kept.
    moved_away.published += 100
    assert sum_fleets([engine_fleet, served], retired).published == 30
