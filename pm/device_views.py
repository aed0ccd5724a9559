"""The device API's wire shapes (``GET /devices``, ``/devices/{id}``, ``/devices/{id}/tasks``),
as msgspec Structs; the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .schemas import TaskView

PresenceName = Literal["online", "offline", "unknown"]


class DeviceView(msgspec.Struct, rename="camel", kw_only=True):
    """One device: its presence and its work."""

    id: str
    presence: PresenceName
    # ISO 8601 UTC, null: never.
    last_seen: Annotated[
        str | None,
        msgspec.Meta(
            description="the last time the device was heard from: any message of it (a "
            "status, an answer) or of the embedded broker about it; ISO 8601 UTC, null: never. "
            "Exact while the gateway runs; the store keeps it to within 30 s (it is not "
            "written for every message)"
        ),
    ]
    connected_at: str | None
    disconnected_at: str | None
    # Its tasks not yet sent (status "pending"), across jobs.
    pending: int
    in_flight: Annotated[
        int | None,
        msgspec.Meta(
            description="the id of the task it is working on now, if any. In a cluster, "
            "through a gateway that does not serve its shard: its task stored as sent, as of "
            "the serving gateway's last commit"
        ),
    ]
    latency_p50: Annotated[
        float | None,
        msgspec.Meta(
            description="median seconds from publishing a request to the device's final "
            "answer, over its last 32 answered tasks since the gateway started (kept in "
            "memory only); null before its first answer, and in a cluster through a gateway "
            "that does not serve its shard"
        ),
    ]
    # Its stored tasks by status (every status it has tasks in).
    counts: dict[str, int]


class DeviceTaskView(TaskView, kw_only=True):
    """A task as ``GET /jobs/{id}?collection=true`` shows it, with the job it belongs to."""

    job_id: int = msgspec.field(name="jobId")
