"""``GET /fleet``: the whole fleet at a glance, and the dispatch rate over the last minutes.

:class:`ThroughputHistory` is pure bookkeeping (no I/O, no clock of its own): it is handed the
fleet's running totals of requests published and final answers received at each sample and
keeps the rates between consecutive samples, at most :data:`HISTORY_SAMPLES` of them.
:func:`sample_throughput` feeds it every :data:`SAMPLE_INTERVAL` seconds; the HTTP app runs it
in its nursery for as long as it serves.

Error handling: none to do; a sampler cancelled with the app simply stops.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import msgspec
import trio

from .schemas import Health
from .state import iso_timestamp

# Seconds between two samples, and how many are kept: five minutes of history.
SAMPLE_INTERVAL = 5.0
HISTORY_SAMPLES = 60


class ThroughputSample(msgspec.Struct, rename="camel", kw_only=True):
    """The rates over one sample interval, ending at ``at``."""

    at: str
    dispatched_per_second: float
    answered_per_second: float


class FleetView(msgspec.Struct, rename="camel", kw_only=True):
    """What ``GET /fleet`` answers."""

    # Devices by presence, as the presence sources last said (devices known only from stored
    # tasks, never heard of, are not counted: GET /devices?presence=unknown lists them).
    devices_online: int
    devices_offline: int
    # Requests published and awaiting their final answer, now.
    tasks_in_flight: int
    # Totals since the gateway started (in a cluster, this gateway's: pm.fleet_counters).
    tasks_dispatched: int
    tasks_answered: int
    jobs_running: int
    # One sample per interval over the last minutes, oldest first (empty just after start).
    throughput: list[ThroughputSample]
    sample_interval: float
    # The gateway's health (broker connection, reconnects, embedded broker restarts), as
    # GET /healthz answers it.
    health: Health


class ThroughputHistory:
    """Rates between consecutive samples of two running totals.

    Args:
      capacity: samples kept; older ones are dropped.
    """

    def __init__(self, capacity: int = HISTORY_SAMPLES) -> None:
        self._samples: deque[ThroughputSample] = deque(maxlen=capacity)
        self._last: tuple[float, int, int] | None = None

    def record(self, now: float, wall_clock: float, dispatched: int, answered: int) -> None:
        """Take the totals at monotonic time ``now`` (``wall_clock`` dates the sample)."""
        if self._last is not None:
            then, dispatched_then, answered_then = self._last
            elapsed = now - then
            if elapsed > 0:
                self._samples.append(
                    ThroughputSample(
                        at=iso_timestamp(wall_clock),
                        dispatched_per_second=(dispatched - dispatched_then) / elapsed,
                        answered_per_second=(answered - answered_then) / elapsed,
                    )
                )
        self._last = (now, dispatched, answered)

    def samples(self) -> list[ThroughputSample]:
        """The samples kept, oldest first."""
        return list(self._samples)


async def sample_throughput(
    history: ThroughputHistory,
    totals: Callable[[], tuple[int, int]],
    interval: float = SAMPLE_INTERVAL,
    wall_clock: Callable[[], float] = time.time,
) -> None:
    """Record ``totals()`` (published, answered) into ``history`` every ``interval`` seconds,
    forever; the first sample is taken at once."""
    while True:
        dispatched, answered = totals()
        history.record(trio.current_time(), wall_clock(), dispatched, answered)
        await trio.sleep(interval)
