"""Query strings as msgspec Structs: one definition validates requests and documents them.

``pm.http.openapi`` turns each Struct's fields into OpenAPI query parameters, so a limit or an
allowed value is written once, here.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import msgspec
from werkzeug.datastructures import MultiDict

from ..device_views import PresenceName
from ..job_retry import DEFAULT_RETRY_STATUSES
from ..outcomes import JobOutcome
from ..protocol import InvalidDeviceId, normalize_device_id
from ..schemas import (
    MAX_SQLITE_INTEGER,
    DeviceId,
    JobStatus,
    TaskStatus,
    WaitingReason,
)
from ..watch import TASK_MODES

PageSize = Annotated[int, msgspec.Meta(ge=1, le=1000, description="jobs per page, 1-1000")]
PageOffset = Annotated[
    int, msgspec.Meta(ge=0, le=MAX_SQLITE_INTEGER, description="jobs to skip, newest first")
]


class _Query(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Unknown parameters are refused rather than ignored: a misspelt ``?stauts=`` that
    # silently returns every job is worse than a 400 that names it.
    pass


class ListJobsQuery(_Query):
    """``GET /jobs``."""

    # UNSET rather than None for "absent": non-strict conversion would read ?status=null as
    # None, silently listing every job.
    status: (
        Annotated[JobStatus, msgspec.Meta(description="only jobs in this status")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    outcome: (
        Annotated[
            JobOutcome,
            msgspec.Meta(
                description="only finished jobs with this outcome: every task resolved "
                "(succeeded), none did (failed), or some did (partial)"
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    limit: PageSize = 100
    offset: PageOffset = 0


TaskPageSize = Annotated[int, msgspec.Meta(ge=1, le=1000, description="tasks per page, 1-1000")]
JobTaskPageOffset = Annotated[
    int, msgspec.Meta(ge=0, le=MAX_SQLITE_INTEGER, description="tasks to skip, in job order")
]


class SubmitJobQuery(_Query):
    """``POST /jobs``."""

    dry_run: Annotated[
        bool,
        msgspec.Meta(
            description="true: validate and expand the job, store and send nothing, and "
            "answer its task and device counts, its destinations' presence now and a "
            "predicted duration"
        ),
    ] = msgspec.field(default=False, name="dryRun")


class RetryJobQuery(_Query):
    """``POST /jobs/{id}/retry``."""

    status: Annotated[
        str,
        msgspec.Meta(
            pattern="^(resolved|error|timeout|expired|cancelled)"
            "(,(resolved|error|timeout|expired|cancelled))*$",
            description="retry the tasks that ended so: final statuses, comma-separated "
            "(default: error,timeout,expired,cancelled)",
        ),
    ] = ",".join(DEFAULT_RETRY_STATUSES)

    @property
    def statuses(self) -> tuple[TaskStatus, ...]:
        return tuple(dict.fromkeys(self.status.split(",")))  # type: ignore[arg-type]


class JobTasksQuery(_Query):
    """``GET /jobs/{id}/tasks``: filters combine (all must hold)."""

    status: (
        Annotated[TaskStatus, msgspec.Meta(description="only tasks in this status")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    device: (
        Annotated[DeviceId, msgspec.Meta(description="only tasks to this device (any spelling)")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    waiting: (
        Annotated[WaitingReason, msgspec.Meta(description="only pending tasks waiting for this")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    limit: TaskPageSize = 100
    offset: JobTaskPageOffset = 0

    def __post_init__(self) -> None:
        # Tasks hold normalized ids: any spelling of a MAC finds them.
        if self.device is not msgspec.UNSET:
            try:
                self.device = normalize_device_id(self.device)
            except InvalidDeviceId as error:
                raise ValueError(f"device: {error}") from None


class JobQuery(_Query):
    """``GET /jobs/{id}`` and ``DELETE /jobs/{id}``."""

    collection: Annotated[
        bool, msgspec.Meta(description="true: embed full task objects instead of task ids")
    ] = False


class WatchJobQuery(_Query):
    """``GET /jobs/{id}/ws`` (the WebSocket handshake)."""

    # What a watcher's frames cost the gateway is their number: a progress view that needs a
    # snapshot a second (the dashboard) says so instead of taking one per coalesce_interval.
    interval: (
        Annotated[
            float,
            msgspec.Meta(
                ge=0,
                le=60,
                description="least seconds between two job snapshots (and batch ticks) to this "
                "watcher; never less than watchers.coalesce_interval",
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET

    # A plain str checked by parse_task_mode, whose message lists the modes.
    tasks: Annotated[
        str,
        msgspec.Meta(
            description="what the watcher receives about tasks",
            extra_json_schema={"enum": list(TASK_MODES)},
        ),
    ] = "each"
    token: (
        Annotated[
            str,
            msgspec.Meta(
                description="a bearer token, for browsers, which cannot set headers on a "
                "WebSocket; the Authorization header wins when both are sent"
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET


DevicePageSize = Annotated[int, msgspec.Meta(ge=1, le=1000, description="devices per page, 1-1000")]
DevicePageOffset = Annotated[
    int, msgspec.Meta(ge=0, le=MAX_SQLITE_INTEGER, description="devices to skip, by id")
]
DeviceTaskPageOffset = Annotated[
    int, msgspec.Meta(ge=0, le=MAX_SQLITE_INTEGER, description="tasks to skip, newest first")
]


class ListDevicesQuery(_Query):
    """``GET /devices``."""

    presence: (
        Annotated[PresenceName, msgspec.Meta(description="only devices with this presence")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    q: Annotated[
        str, msgspec.Meta(max_length=64, description="only devices whose id starts with this")
    ] = ""
    limit: DevicePageSize = 100
    offset: DevicePageOffset = 0


class DeviceTasksQuery(_Query):
    """``GET /devices/{id}/tasks``."""

    status: (
        Annotated[TaskStatus, msgspec.Meta(description="only tasks in this status")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    limit: TaskPageSize = 100
    offset: DeviceTaskPageOffset = 0


class NoQuery(_Query):
    """Every other endpoint: no query parameter at all."""


# Each endpoint's query Struct, by the name of its handler (pm.http.app and its route
# modules); NoQuery otherwise.
ENDPOINT_QUERIES: dict[str, type[_Query]] = {
    "submit_job": SubmitJobQuery,
    "list_jobs": ListJobsQuery,
    "retry_job": RetryJobQuery,
    "get_job": JobQuery,
    "list_job_tasks": JobTasksQuery,
    "delete_job": JobQuery,
    "watch_job": WatchJobQuery,
    "list_devices": ListDevicesQuery,
    "device_tasks": DeviceTasksQuery,
}


class InvalidQuery(ValueError):
    """The query string does not fit its Struct; the message names the parameter."""


QueryT = TypeVar("QueryT", bound=_Query)


def parse_endpoint_query(endpoint: str, args: MultiDict[str, str]) -> _Query:
    """The query string of a request to ``endpoint`` (a handler name), validated.

    Error handling: as :func:`parse_query`; every endpoint refuses unknown parameters.
    """
    return parse_query(args, ENDPOINT_QUERIES.get(endpoint, NoQuery))


def parse_query(args: MultiDict[str, str], query_type: type[QueryT]) -> QueryT:
    """Validate query parameters into ``query_type``.

    Error handling: raises :class:`InvalidQuery` with msgspec's message, which names the
    parameter (``Expected `int` >= 1 - at `$.limit```), or naming a parameter given twice
    (which of two values was meant cannot be guessed).
    """
    for name in args:
        if len(args.getlist(name)) > 1:
            raise InvalidQuery(f"invalid query string: `{name}` is given more than once")
    try:
        # strict=False: every query value is a string; let "10" become 10 and "true" True.
        return msgspec.convert({name: args[name] for name in args}, query_type, strict=False)
    except msgspec.ValidationError as error:
        raise InvalidQuery(f"invalid query string: {error}") from None
