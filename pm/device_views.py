"""The device API's wire shapes (``GET /devices``, ``/devices/{id}``, ``/devices/{id}/tasks``),
as msgspec Structs; the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Literal

import msgspec

from .schemas import TaskView

PresenceName = Literal["online", "offline", "unknown"]


class DeviceView(msgspec.Struct, rename="camel", kw_only=True):
    """One device: its presence and its work."""

    id: str
    presence: PresenceName
    # ISO 8601 UTC, null: never. lastSeen is the last time a presence source spoke of it.
    last_seen: str | None
    connected_at: str | None
    disconnected_at: str | None
    # Its tasks not yet sent (status "pending"), across jobs.
    pending: int
    # The id of the task it is working on now, if any.
    in_flight: int | None
    # Median seconds from request to final answer over its recent tasks; null while the
    # gateway does not record answer latencies per device (not yet implemented).
    latency_p50: float | None
    # Its stored tasks by status (every status it has tasks in).
    counts: dict[str, int]


class DeviceTaskView(TaskView, kw_only=True):
    """A task as ``GET /jobs/{id}?collection=true`` shows it, with the job it belongs to."""

    job_id: int = msgspec.field(name="jobId")
