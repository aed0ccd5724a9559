"""``GET /fleet``: the fleet overview the dashboard's first page shows (:mod:`pm.fleet_overview`).

Kept beside :mod:`pm.http.app`, which registers it after its guards. The throughput sampler
runs in the app's nursery from ``before_serving``: it lives and dies with the server.

Error handling: none of its own; the sampler is cancelled with the app at shutdown.
"""

from __future__ import annotations

from collections.abc import Callable

from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from ..engine import Engine
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
    fleet = engine.fleet

    @app.before_serving
    async def start_sampling() -> None:
        app.nursery.start_soon(
            sample_throughput, history, lambda: (fleet.published, fleet.answered)
        )

    @app.get("/fleet")
    async def fleet_overview() -> TrioResponse:
        online = offline = 0
        for record in engine.presence.records():
            if record.presence == Presence.ONLINE:
                online += 1
            elif record.presence == Presence.OFFLINE:
                offline += 1
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
