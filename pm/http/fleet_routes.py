"""``GET /fleet``: the fleet overview the dashboard's first page shows (:mod:`pm.fleet_overview`).

The task counters and the throughput are this gateway's (:mod:`pm.fleet_counters`: in a
cluster, summed over the shards it serves and served); devices online and offline and
``jobsRunning`` are the cluster's.

Kept beside :mod:`pm.http.app`, which registers it after its guards. The throughput sampler
runs in the app's nursery from ``before_serving``: it lives and dies with the server.

Error handling: none of its own; the sampler is cancelled with the app at shutdown.
"""

from __future__ import annotations

from collections.abc import Callable

from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from ..engine import Engine
from ..fleet_counters import gateway_fleet_counters
from ..fleet_overview import (
    SAMPLE_INTERVAL,
    FleetView,
    ThroughputHistory,
    sample_throughput,
)
from ..presence import Presence
from ..schemas import Health
from .responses import json_response


def add_fleet_routes(app: QuartTrio, engine: Engine, health: Callable[[], Health]) -> None:
    """Register ``GET /fleet`` on ``app`` and start its sampler when the app starts serving."""
    history = ThroughputHistory()

    def totals() -> tuple[int, int]:
        counters = gateway_fleet_counters(engine)
        return counters.published, counters.answered

    @app.before_serving
    async def start_sampling() -> None:
        app.nursery.start_soon(sample_throughput, history, totals)

    @app.get("/fleet")
    async def fleet_overview() -> TrioResponse:
        online = offline = 0
        for record in engine.presence.records():
            if record.presence == Presence.ONLINE:
                online += 1
            elif record.presence == Presence.OFFLINE:
                offline += 1
        # This gateway's (in a cluster, its shards'); presence and jobs are the cluster's.
        fleet = gateway_fleet_counters(engine)
        return json_response(
            FleetView(
                devices_online=online,
                devices_offline=offline,
                tasks_in_flight=fleet.in_flight,
                tasks_dispatched=fleet.published,
                tasks_answered=fleet.answered,
                jobs_running=engine.jobs_running,
                throughput=history.samples(),
                sample_interval=SAMPLE_INTERVAL,
                health=health(),
            )
        )
