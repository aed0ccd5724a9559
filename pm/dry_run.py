"""``POST /jobs?dryRun=true``: what a job would do, without storing or sending anything.

The request is validated and checked against ``[limits]`` exactly as a real submit (the same
4xx), expanded into its per-device task counts, and answered with how many destinations are
online, offline or unknown now and a predicted duration.

The prediction (:func:`predict_duration`) is a lower bound from three limits, whichever is
longest: a device works on one task at a time (its tasks one after another, each taking the
device's recent median latency, else :data:`ASSUMED_LATENCY`); at most ``maxInFlight`` tasks
are out at once (the job's total device-time shared among that many); at most
``maxPerMinute`` sends a minute. It ignores the ramp (which only shortens a window-bound
rollout once it grows), retries, and time spent waiting for offline devices or for the
schedule; ``startsAt`` says when the schedule first lets the job send.

Pure functions; the route gathers presence and latencies and calls :func:`plan_dry_run`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime

import msgspec

from .presence import Presence
from .schedule import Schedule, schedule_state
from .state import iso_timestamp

# The longest prediction given (ten years): a rate of a few sends a century would otherwise
# predict more seconds than a float holds, and JSON has no infinity.
MAX_PREDICTED_DURATION = 10 * 365 * 24 * 3600.0
# Seconds a task is assumed to take on a device whose recent latency is not known. One
# second: a Sanji request/answer round trip on a device answering at once is far less, a
# command that does real work (a firmware step, a restart) far more; a stated figure beats
# a guess hidden in the answer.
ASSUMED_LATENCY = 1.0


class DestinationPresence(msgspec.Struct, kw_only=True):
    """How many distinct destination devices are online, offline or unknown now."""

    online: int = 0
    offline: int = 0
    unknown: int = 0


class DryRunPlan(msgspec.Struct, rename="camel", kw_only=True):
    """The answer of ``POST /jobs?dryRun=true``: nothing was stored or sent."""

    dry_run: bool = True
    total_count: int  # tasks the job would have
    device_count: int  # distinct destination devices
    destinations: DestinationPresence
    # Seconds from the first send to the last answer, a lower bound (see basis).
    predicted_duration: float
    # When the schedule first lets the job send (ISO 8601, UTC); null: at once.
    starts_at: str | None = None
    # Devices whose recent latency was known, and the latency assumed for the others.
    latencies_known: int = 0
    assumed_latency: float = ASSUMED_LATENCY
    # What the prediction takes into account, in words.
    basis: str = ""


def predict_duration(
    tasks_per_device: dict[str, int],
    latency_of: Callable[[str], float | None],
    *,
    max_in_flight: int | None = None,
    max_per_minute: float | None = None,
) -> tuple[float, int]:
    """Seconds the job needs at least (at most :data:`MAX_PREDICTED_DURATION`), and how
    many devices' latencies were known.

    See the module docstring for the model.
    """
    known = 0
    longest_device = 0.0
    device_time = 0.0
    for device, count in tasks_per_device.items():
        latency = latency_of(device)
        if latency is None:
            latency = ASSUMED_LATENCY
        else:
            known += 1
        longest_device = max(longest_device, count * latency)
        device_time += count * latency
    bounds = [longest_device]
    if max_in_flight is not None:
        bounds.append(device_time / max_in_flight)
    if max_per_minute is not None:
        # The first send goes at once; each further one waits its turn in the rate.
        bounds.append((sum(tasks_per_device.values()) - 1) * 60.0 / max_per_minute)
    return min(max(bounds), MAX_PREDICTED_DURATION), known


def plan_dry_run(
    devices: list[list[str]],
    *,
    presence_of: Callable[[str], Presence],
    latency_of: Callable[[str], float | None],
    now: datetime,
    schedule: Schedule | None = None,
    max_in_flight: int | None = None,
    max_per_minute: float | None = None,
) -> DryRunPlan:
    """The plan of a job whose batch entries go to ``devices`` (normalized ids, per entry).

    ``now`` is the wall clock as an aware datetime (for the schedule's first send).
    """
    tasks_per_device = Counter(device for entry in devices for device in entry)
    destinations = DestinationPresence()
    for device in tasks_per_device:
        presence = presence_of(device)
        if presence == Presence.ONLINE:
            destinations.online += 1
        elif presence == Presence.OFFLINE:
            destinations.offline += 1
        else:
            destinations.unknown += 1
    duration, known = predict_duration(
        tasks_per_device,
        latency_of,
        max_in_flight=max_in_flight,
        max_per_minute=max_per_minute,
    )
    limits = ["one task at a time per device"]
    if max_in_flight is not None:
        limits.append(f"at most {max_in_flight} in flight")
    if max_per_minute is not None:
        limits.append(f"at most {max_per_minute:g} sends a minute")
    return DryRunPlan(
        total_count=sum(tasks_per_device.values()),
        device_count=len(tasks_per_device),
        destinations=destinations,
        predicted_duration=round(duration, 3),
        starts_at=_first_send(schedule, now),
        latencies_known=known,
        basis=(
            f"{', '.join(limits)}; {known} devices' recent median latency, "
            f"{ASSUMED_LATENCY:g} s assumed for the other {len(tasks_per_device) - known}; "
            "ramp, retries and waits for offline devices not counted"
        ),
    )


def _first_send(schedule: Schedule | None, now: datetime) -> str | None:
    if schedule is None:
        return None
    state = schedule_state(schedule, now)
    if state.hold is None or state.until is None:
        return None
    # Outside a window at the window's opening is impossible, and after startAt the next
    # answer is the window: asked twice at most for a start before the first window.
    moment = state.until
    later = schedule_state(schedule, moment)
    if later.hold == "outside-window" and later.until is not None:
        moment = later.until
    return iso_timestamp(moment.timestamp())
