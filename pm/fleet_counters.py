"""A gateway's fleet counters: the one place ``GET /fleet``, its throughput sampler,
``/metrics`` and ``/healthz`` read requests published, answered, in flight, live device
actors and dropped messages from.

On one gateway that is the engine's :class:`~pm.devices.Fleet`. In a cluster the engine's
fleet dispatches nothing (it only counts messages for no served shard): each shard the gateway
serves has a fleet of its own (:class:`pm.shard_service.ShardService`), so the counters are
the sum of the engine's fleet and every shard fleet, plus the cumulative counters of the shard
fleets it stopped serving (:class:`RetiredFleets`), so that a counter never goes backwards when
a shard moves to another gateway. They are this gateway's: a sum over the gateways gives the
cluster's.

Everything is summed at read time: the dispatch path counts nothing more for it.

Error handling: none; pure reads of counters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .engine import Engine


class CountingFleet(Protocol):
    """What is read of a :class:`~pm.devices.Fleet`."""

    @property
    def live_actors(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def republished(self) -> int: ...

    published: int
    answered: int
    dropped: Counter[str]


@dataclass
class RetiredFleets:
    """The cumulative counters of the shard fleets a gateway stopped serving (gauges, in
    flight and live actors, end with the fleet)."""

    published: int = 0
    answered: int = 0
    republished: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def retire(self, fleet: CountingFleet) -> None:
        """Keep ``fleet``'s cumulative counters; called once, as its shard stops being served."""
        self.published += fleet.published
        self.answered += fleet.answered
        self.republished += fleet.republished
        self.dropped.update(fleet.dropped)


@dataclass(frozen=True)
class FleetCounters:
    """A gateway's fleet counters at one instant."""

    live_actors: int
    in_flight: int
    published: int
    answered: int
    republished: int
    dropped: dict[str, int]


def sum_fleets(fleets: Iterable[CountingFleet], retired: RetiredFleets | None) -> FleetCounters:
    """The counters of ``fleets`` added up, with those of the ``retired`` ones."""
    live_actors = in_flight = 0
    published = answered = republished = 0
    dropped: Counter[str] = Counter()
    if retired is not None:
        published, answered, republished = retired.published, retired.answered, retired.republished
        dropped.update(retired.dropped)
    for fleet in fleets:
        live_actors += fleet.live_actors
        in_flight += fleet.in_flight
        published += fleet.published
        answered += fleet.answered
        republished += fleet.republished
        dropped.update(fleet.dropped)
    return FleetCounters(
        live_actors=live_actors,
        in_flight=in_flight,
        published=published,
        answered=answered,
        republished=republished,
        dropped=dict(dropped),
    )


def gateway_fleet_counters(engine: Engine) -> FleetCounters:
    """``engine``'s fleet counters and, in a cluster, those of every shard fleet the gateway
    serves and served (module docstring)."""
    # Imported here: pm.cluster_engine imports pm.shard_dispatch, which imports this module.
    from .cluster_engine import ClusterEngine

    dispatcher = engine.dispatcher if isinstance(engine, ClusterEngine) else None
    if dispatcher is None:
        return sum_fleets((engine.fleet,), None)
    shard_fleets = [service.fleet for service in dispatcher.services.values()]
    return sum_fleets((engine.fleet, *shard_fleets), dispatcher.retired)
