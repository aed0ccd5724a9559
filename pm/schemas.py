"""The REST/WebSocket wire shapes, as msgspec Structs: validation and JSON in one place.

The OpenAPI document is generated from these (``pm.http.openapi``); nothing here is written
twice. Field names follow the seed (sanji-puppetmaster): camelCase, ``__destination``,
``__task``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import msgspec

from .job_options import (
    MAX_ABORT_CRITERIA,
    AbortCriterion,
    AbortStatus,
    AttemptView,
    HoldReason,
    JobOptions,
    Priority,
    RetryOptions,
    RolloutOptions,
    RolloutStatus,
    field_doc,
)
from .outcomes import ETA_DOC, OUTCOME_DOC, OUTCOMES_DOC, JobOutcome, OutcomeHistogram
from .protocol import InvalidDeviceId, normalize_device_id
from .schedule import SCHEDULE_DOC, Schedule

TaskStatus = Literal["pending", "sent", "resolved", "error", "timeout", "cancelled", "expired"]
# paused: sends nothing new (by a user or an abort criterion); scheduled: waits for its
# schedule; aborted: an abort criterion with action "cancel" stopped it (final).
JobStatus = Literal[
    "pending",
    "dispatching",
    "paused",
    "scheduled",
    "resolved",
    "timeout",
    "cancelled",
    "aborted",
]
FINAL_TASK_STATUSES: frozenset[str] = frozenset(
    {"resolved", "error", "timeout", "cancelled", "expired"}
)
TASK_STATUSES: tuple[TaskStatus, ...] = get_args(TaskStatus)
# Why a pending task is not sent yet: its device is offline or works on another task; its
# job's window is full or its rate spent; it waits out a retry's backoff; its job is paused
# or outside its schedule's windows; its turn came but the fleet's budget of requests in
# flight (`[tasks] max_in_flight`) is full.
WaitingReason = Literal[
    "device-offline",
    "device-busy",
    "rollout-window",
    "rollout-rate",
    "retry-backoff",
    "job-paused",
    "outside-window",
    "fleet-budget",
]
WAITING_REASONS: tuple[WaitingReason, ...] = get_args(WaitingReason)
FINAL_JOB_STATUSES: frozenset[str] = frozenset({"resolved", "timeout", "cancelled", "aborted"})
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
# Job ids and list offsets are SQLite integers (signed 64-bit): no job has a larger id, and a
# larger value would overflow the store's query (a 500 instead of a 404 or a 400).
MAX_SQLITE_INTEGER = 2**63 - 1

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, description="seconds, > 0")]
# expiresAt = createdAt + expiresIn is shown as an ISO 8601 date, which ends at year 9999: a
# larger expiresIn made every view of its task a 500. Ten years is a deadline no fleet needs
# beyond (a task that should wait longer sets none).
MAX_EXPIRES_IN = 10 * 365 * 24 * 3600.0
ExpiresIn = Annotated[
    float,
    msgspec.Meta(gt=0, le=MAX_EXPIRES_IN, description="seconds, > 0 and at most 10 years"),
]
MethodName = Annotated[
    str,
    msgspec.Meta(
        pattern="^(?i:get|post|put|delete)$",
        description="get, post, put or delete, in any case; stored lowercase",
    ),
]
Resource = Annotated[str, msgspec.Meta(pattern="^/", description="a Sanji resource path")]
DeviceId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        # Documented for clients and API fuzzers (every valid id, MAC spellings included,
        # matches it), not enforced here: normalize_device_id checks it with an error that
        # says "invalid device id".
        extra_json_schema={"pattern": "^[A-Za-z0-9._:-]{1,64}$"},
        description="a MAC address (any of the usual spellings) or ^[A-Za-z0-9._:-]{1,64}$",
    ),
]


class BatchEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One Sanji command and the devices it goes to (one task per destination)."""

    method: MethodName
    resource: Resource
    destination: (
        DeviceId
        | Annotated[
            list[DeviceId], msgspec.Meta(min_length=1, extra_json_schema={"uniqueItems": True})
        ]
    ) = msgspec.field(name="__destination")
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout: PositiveSeconds | None = None
    # Seconds after the job's creation by which each task must have been sent, else it ends
    # "expired" without reaching its device; null: the job's expiresIn, then [tasks].
    expires_in: ExpiresIn | None = msgspec.field(default=None, name="expiresIn")

    def __post_init__(self) -> None:
        self.method = self.method.lower()
        raw = [self.destination] if isinstance(self.destination, str) else self.destination
        devices: list[str] = []
        seen: set[str] = set()
        for item in raw:
            try:
                device = normalize_device_id(item)
            except InvalidDeviceId as error:
                raise ValueError(f"__destination: {error}") from None
            if device in seen:
                raise ValueError(f"__destination: device {device!r} is listed more than once")
            seen.add(device)
            devices.append(device)
        self.destination = devices

    @property
    def devices(self) -> list[str]:
        """Normalized destinations (``__post_init__`` always stores a list)."""
        assert isinstance(self.destination, list)
        return self.destination


class JobRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of ``POST /jobs``."""

    batch: Annotated[list[BatchEntry], msgspec.Meta(min_length=1)]
    timeout: PositiveSeconds | None = None
    # The default expiresIn of the batch's entries (see BatchEntry.expires_in).
    expires_in: ExpiresIn | None = msgspec.field(default=None, name="expiresIn")
    # Rollout options (pm/job_options.py): all optional, none changes a job without them.
    rollout: Annotated[
        RolloutOptions | None,
        field_doc("pacing: a window, a rate, a ramp", {"maxInFlight": 50, "maxPerMinute": 600}),
    ] = None
    abort: Annotated[
        Annotated[list[AbortCriterion], msgspec.Meta(max_length=MAX_ABORT_CRITERIA)] | None,
        field_doc(
            "criteria that pause or stop the job, checked at every outcome",
            [{"on": "error", "thresholdPercent": 5, "minSettled": 100, "action": "cancel"}],
        ),
    ] = None
    retry: Annotated[
        RetryOptions | None,
        field_doc(
            "failed attempts sent again after a backoff", {"max": 3, "delay": 5, "jitter": 0.2}
        ),
    ] = None
    priority: Annotated[
        Priority,
        field_doc(
            "high: ahead of normal tasks waiting for the same device, and first for the "
            "fleet's budget ([tasks] max_in_flight)",
            "high",
        ),
    ] = "normal"
    schedule: Annotated[Schedule | None, SCHEDULE_DOC] = None

    @property
    def options(self) -> JobOptions:
        """What the job is asked beyond its batch, as stored with it."""
        return JobOptions(
            rollout=self.rollout,
            abort=self.abort,
            retry=self.retry,
            priority=self.priority,
            schedule=self.schedule,
        )


class TaskState(msgspec.Struct, rename="camel", kw_only=True):
    created_at: str
    finish_at: str | None
    timeout: float
    status: TaskStatus
    progress: int
    result: Any = None
    # When a task still unsent ends "expired"; null: it waits as long as its job runs.
    expires_at: str | None = None
    # A task still in its job's queue shows its job's window or rate (pm.state.JobRecord).
    waiting: Annotated[
        WaitingReason | None,
        field_doc(
            "why a pending task is not sent yet (null once sent, and while nothing holds it"
            " up): its device's, its own (retry-backoff, fleet-budget) or its job's (paused,"
            " outside its windows; rollout-window and rollout-rate for every task still in"
            " the job's queue, read from the job when the task is read)",
            "rollout-window",
        ),
    ] = None
    # Copies of the current attempt's request the gateway published, all with its id: 1 once
    # sent, one more each time it was re-sent because the device (or the broker connection)
    # came back; a retry starts again at 0 (each earlier attempt keeps its own count).
    sends: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            description="copies of the current attempt's request published, all with its id:"
            " 1 once sent, one more per re-send (its device or the broker connection came"
            " back, or its device was first seen after a gateway restart); never on a timer;"
            " a retry starts again at 0, each of previousAttempts keeps its own sends",
        ),
    ] = 0
    sent_at: Annotated[
        str | None,
        field_doc(
            "when the request of its latest attempt was first published (null: not sent "
            "yet; re-sends keep it): finishAt - sentAt is the time to the answer",
            "2026-12-01T12:00:00.120Z",
        ),
    ] = None
    attempts: Annotated[int, field_doc("attempts sent so far (more than 1: retried)", 2)] = 0
    next_attempt_at: Annotated[
        str | None,
        field_doc("when its next attempt may go (retry backoff)", "2026-12-01T12:00:05.000Z"),
    ] = None
    previous_attempts: Annotated[
        list[AttemptView] | msgspec.UnsetType,
        field_doc(
            "its earlier attempts, oldest first, each with its request id and outcome "
            "(absent: never retried)",
            [
                {
                    "attempt": 1,
                    "requestId": 1042,
                    "status": "error",
                    "result": {"code": 503},
                    "finishAt": "2026-12-01T12:00:00.000Z",
                }
            ],
        ),
    ] = msgspec.UNSET


class TaskView(msgspec.Struct, kw_only=True):
    """A task as the seed shows it."""

    id: int
    method: str
    resource: str
    tunnel: str
    data: Any
    destination: str = msgspec.field(name="__destination")
    task: TaskState = msgspec.field(name="__task")


class JobView(msgspec.Struct, rename="camel", kw_only=True):
    """A job. ``collection`` holds task ids, full tasks with ``?collection=true``, and is
    absent from WebSocket snapshots."""

    id: int
    created_at: str
    finish_at: str | None
    timeout: float | None
    status: JobStatus
    progress: int
    total_count: int
    done_count: int
    finish_count: int
    error_count: int
    pending_count: int
    sent_count: int
    expired_count: int
    retried_count: Annotated[int, field_doc("tasks sent more than once (retried)", 3)] = 0
    holds: Annotated[
        list[HoldReason], field_doc("why the job sends nothing new now (empty: it may)", ["paused"])
    ] = msgspec.field(default_factory=list)
    rollout: Annotated[
        RolloutStatus | msgspec.UnsetType,
        field_doc(
            "its pacing now, after ramp steps (absent: the job has no rollout)",
            {"maxInFlight": 100, "maxPerMinute": 1200, "rampSteps": 1, "inFlight": 97},
        ),
    ] = msgspec.UNSET
    abort: Annotated[
        list[AbortStatus] | msgspec.UnsetType,
        field_doc(
            "each abort criterion live, in the order given (absent: none given); settled is "
            "the denominator: tasks with an outcome so far",
            [
                {
                    "on": "error",
                    "thresholdPercent": 5,
                    "minSettled": 100,
                    "action": "cancel",
                    "matching": 6,
                    "settled": 120,
                    "percent": 5.0,
                    "tripped": True,
                }
            ],
        ),
    ] = msgspec.UNSET
    stopped_by: Annotated[
        int | None | msgspec.UnsetType,
        field_doc(
            "index in abort of the criterion that stopped or paused the job (null: none did)", 0
        ),
    ] = msgspec.UNSET
    outcomes: Annotated[OutcomeHistogram, OUTCOMES_DOC] = msgspec.field(
        default_factory=OutcomeHistogram
    )
    outcome: Annotated[JobOutcome | None, OUTCOME_DOC] = None
    eta: Annotated[str | None, ETA_DOC] = None
    # One list type holding either kind: msgspec cannot decode (or make a JSON schema of) a
    # union of two list types, and the OpenAPI document and the CLI need both.
    collection: list[int | TaskView] | msgspec.UnsetType = msgspec.UNSET


class JobMessage(msgspec.Struct, tag_field="type", tag="job"):
    """WebSocket: a job snapshot (never with a collection)."""

    job: JobView


class TaskMessage(msgspec.Struct, tag_field="type", tag="task"):
    """WebSocket: one task changed."""

    task: TaskView


class TasksMessage(msgspec.Struct, tag_field="type", tag="tasks"):
    """WebSocket (``?tasks=batch``): the task changes since the previous one, oldest first."""

    tasks: list[TaskView]


WatchMessage = JobMessage | TaskMessage | TasksMessage


class ErrorBody(msgspec.Struct):
    message: str


class AnswerPathHealth(msgspec.Struct, kw_only=True):
    """The gateway's probe of its own answer subscription (pm.mqtt.AnswerPathProbe)."""

    # False from a probe that did not come back until one does again.
    ok: bool
    # The last probe's round trip through the broker, in milliseconds; null before the first.
    last_round_trip_ms: float | None = msgspec.field(name="lastRoundTripMs")
    probes_sent: int = msgspec.field(name="probesSent")
    probes_lost: int = msgspec.field(name="probesLost")
    # Repairs made because probes were lost: re-subscribing, then reconnecting.
    resubscribes: int
    reconnects: int


class Health(msgspec.Struct, kw_only=True):
    # "degraded" while the broker connection is down or the answer path is lost.
    status: Literal["ok", "degraded"]
    broker_connected: bool = msgspec.field(name="brokerConnected")
    broker_reconnects: int = msgspec.field(name="brokerReconnects")
    embedded_broker_restarts: int | None = msgspec.field(name="embeddedBrokerRestarts")
    jobs: int
    jobs_running: int = msgspec.field(name="jobsRunning")
    device_actors: int = msgspec.field(name="deviceActors")
    dropped_messages: dict[str, int] = msgspec.field(name="droppedMessages")
    # null until the gateway's MQTT client is subscribed and probing.
    answer_path: AnswerPathHealth | None = msgspec.field(default=None, name="answerPath")


class Readiness(msgspec.Struct, kw_only=True):
    """``GET /readyz``: whether the gateway can take new work; ``reasons`` says why not."""

    ready: bool
    # One sentence per problem, each starting with what it concerns ("broker: ...",
    # "answer path: ...", "store: ..."); empty when ready.
    reasons: list[str]
