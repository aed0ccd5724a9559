"""The job API's routes: ``POST/GET /jobs``, ``GET/DELETE /jobs/{id}``, ``GET /jobs/{id}/tasks``
and the declaration of the WebSocket ``/jobs/{id}/ws`` (served before quart, by
:mod:`pm.http.watch_route`).

Kept beside :mod:`pm.http.app`, which registers them after its guards (origin, token, query
string, content type) and error handlers; query strings are validated there like every
endpoint's (:mod:`pm.http.queries`).

Error handling: a refusal by ``[limits]`` answers its status (429 with ``Retry-After``, 413,
400) naming the limit and is counted in ``/metrics``; an unknown job is a 404; a DELETE whose
job does not stop within :data:`DELETE_GRACE` is a 503, of a job another gateway runs a 409.
"""

from __future__ import annotations

import msgspec
import trio
from quart import g, request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse
from werkzeug.exceptions import RequestEntityTooLarge

from ..config import Config
from ..dry_run import DryRunPlan, plan_dry_run
from ..engine import (
    DataTooLarge,
    Engine,
    JobRefused,
    JobStateError,
    TooManyJobsRunning,
    TooManyTasks,
)
from ..job_limits import check_limits
from ..jobs import Job
from ..schedule import epoch_to_datetime
from ..schemas import MAX_SQLITE_INTEGER, JobRequest
from ..state import TaskSelection
from .bodies import decode_job_request
from .control_routes import add_control_routes
from .metrics import HttpCounters
from .queries import JobQuery, JobTasksQuery, ListJobsQuery, SubmitJobQuery
from .responses import RETRY_AFTER, error_response, json_response

# How long a DELETE may take to cancel its job once the client has gone (see delete_job).
DELETE_GRACE = 30.0
# Status and limit name (for /metrics) of each refusal the engine can raise.
_REFUSALS: dict[type[JobRefused], tuple[int, str]] = {
    TooManyJobsRunning: (429, "max_jobs_running"),
    TooManyTasks: (413, "max_tasks_per_job"),
    DataTooLarge: (400, "max_data_bytes"),
}


def add_job_routes(app: QuartTrio, engine: Engine, config: Config, counters: HttpCounters) -> None:
    """Register the job routes on ``app``.

    Args:
      engine: where jobs are submitted, listed and deleted.
      config: ``http.max_body_bytes`` bounds a job's body, ``limits.max_json_depth`` its
        nesting.
      counters: where refusals are counted for ``GET /metrics``.
    """
    max_body = config.http.max_body_bytes
    max_depth = config.limits.max_json_depth

    def refused(refusal: JobRefused) -> TrioResponse:
        """The answer to a job the limits refuse, counted in /metrics by limit."""
        status, limit = _REFUSALS[type(refusal)]
        counters.refused[limit] += 1
        headers = {"Retry-After": str(RETRY_AFTER)} if status == 429 else {}
        return error_response(status, str(refusal), headers)

    add_control_routes(app, engine, refused)

    async def find_job(job_id: int) -> Job | None:
        return await engine.find(job_id) if job_id <= MAX_SQLITE_INTEGER else None

    @app.post("/jobs")
    async def submit_job() -> TrioResponse:
        # Refuse an announced oversize body before reading any of it; MAX_CONTENT_LENGTH
        # covers bodies that lie about or omit their length.
        if request.content_length is not None and request.content_length > max_body:
            raise RequestEntityTooLarge()
        body = await request.get_data(cache=False)
        assert isinstance(body, bytes)  # get_data(as_text=False) returns bytes
        job_request = decode_job_request(body, max_depth)
        query = g.query
        assert isinstance(query, SubmitJobQuery)
        if (ended := schedule_ended(job_request, engine.wall_clock())) is not None:
            return error_response(400, ended)
        try:
            if query.dry_run:
                return json_response(dry_run(engine, job_request))
            job = await engine.submit(job_request)
        except JobRefused as refusal:
            return refused(refusal)
        return json_response(job.record.view(), headers={"Location": f"/jobs/{job.id}"})

    @app.get("/jobs")
    async def list_jobs() -> TrioResponse:
        query = g.query
        assert isinstance(query, ListJobsQuery)
        status = None if query.status is msgspec.UNSET else query.status
        outcome = None if query.outcome is msgspec.UNSET else query.outcome
        views, total = await engine.list(
            status=status, outcome=outcome, limit=query.limit, offset=query.offset
        )
        return json_response(views, headers={"X-Total-Count": str(total)})

    @app.get("/jobs/<int:job_id>")
    async def get_job(job_id: int) -> TrioResponse:
        query = g.query
        assert isinstance(query, JobQuery)
        job = await find_job(job_id)
        if job is None:
            return error_response(404, f"no job {job_id}")
        return json_response(job.record.view(collection="tasks" if query.collection else "ids"))

    @app.get("/jobs/<int:job_id>/tasks")
    async def list_job_tasks(job_id: int) -> TrioResponse:
        query = g.query
        assert isinstance(query, JobTasksQuery)
        selection = TaskSelection(
            status=None if query.status is msgspec.UNSET else query.status,
            device=None if query.device is msgspec.UNSET else query.device,
            waiting=None if query.waiting is msgspec.UNSET else query.waiting,
            limit=query.limit,
            offset=query.offset,
        )
        page = await engine.list_tasks(job_id, selection) if job_id <= MAX_SQLITE_INTEGER else None
        if page is None:
            return error_response(404, f"no job {job_id}")
        views, total = page
        return json_response(views, headers={"X-Total-Count": str(total)})

    @app.delete("/jobs/<int:job_id>")
    async def delete_job(job_id: int) -> TrioResponse:
        query = g.query
        assert isinstance(query, JobQuery)
        # A client that hangs up cancels this handler; shielded, a DELETE that has begun
        # still removes its job instead of leaving it cancelled but listed. Bounded, so a
        # stuck job cannot hold server shutdown forever.
        with trio.move_on_after(DELETE_GRACE, shield=True):
            try:
                view = (
                    await engine.delete(job_id, with_tasks=query.collection)
                    if job_id <= MAX_SQLITE_INTEGER
                    else None
                )
            except JobStateError as error:  # it runs on another gateway
                return error_response(409, str(error))
            if view is None:
                return error_response(404, f"no job {job_id}")
            return json_response(view)
        return error_response(503, f"job {job_id} did not stop within {DELETE_GRACE:g} s")

    @app.websocket("/jobs/<int:job_id>/ws")
    async def watch_job(job_id: int) -> None:
        # Declared for routing (a plain HTTP request to the path is told it only accepts
        # WebSockets); every handshake to it is served before quart, by
        # pm.http.watch_route.WatchRoute, whose path pattern matches exactly this rule's.
        raise AssertionError(f"WebSocket /jobs/{job_id}/ws reached quart, not WatchRoute")


def schedule_ended(job_request: JobRequest, now: float) -> str | None:
    """Why the job's schedule refuses it (its ``endAt`` is past: it could never send)."""
    schedule = job_request.schedule
    if schedule is None or schedule.end_at is None:
        return None
    if schedule.end_at > epoch_to_datetime(now):
        return None
    return f"schedule.endAt: {schedule.end_at.isoformat()} is past; the job could never send"


def dry_run(engine: Engine, job_request: JobRequest) -> DryRunPlan:
    """The plan of ``job_request`` (nothing stored or sent).

    Error handling: raises :class:`JobRefused` as a submit would, before anything else.
    """
    check_limits(job_request, engine.config.limits, engine.jobs_running)
    rollout = job_request.rollout
    return plan_dry_run(
        [entry.devices for entry in job_request.batch],
        presence_of=engine.presence.presence,
        latency_of=engine.fleet.latencies.p50,
        now=epoch_to_datetime(engine.wall_clock()),
        schedule=job_request.schedule,
        max_in_flight=None if rollout is None else rollout.max_in_flight,
        max_per_minute=None if rollout is None else rollout.max_per_minute,
    )
