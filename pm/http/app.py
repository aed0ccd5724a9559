"""The REST and WebSocket API: a quart-trio app over an :class:`~pm.engine.Engine`.

Handlers stay thin: validate (msgspec), call the engine, encode (msgspec). Every response,
errors included, is JSON; errors are ``{"message": "..."}`` (:class:`~pm.schemas.ErrorBody`).

Error handling: bad input is a 4xx that says what was wrong (msgspec's message names the
field); quart's HTML error pages are replaced by JSON; anything unexpected is logged and
answers a 500 JSON error. A WebSocket handler that fails after the handshake closes with
1011, because quart would otherwise log the error and close with a normal 1000.

Health: ``/healthz`` is liveness (200 whenever the process answers, with what is degraded in
the body); ``/readyz`` is readiness (503 while the broker is disconnected, the answer path is
lost or the job store cannot commit, with the reasons). A store that cannot commit makes
``POST /jobs`` a 503 (:class:`~pm.store.StoreUnavailable`) while reads go on.

Security: with ``api.tokens`` set, every route but ``/healthz`` and ``/readyz`` needs a
bearer token (401 before anything else is looked at, so an unknown path says nothing
either); ``[limits]`` refuse what would cost the gateway too much (413, 400, 429), each
naming its limit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import msgspec
import trio
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from quart import has_request_context, has_websocket_context, request, websocket
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import WebsocketMismatch

from ..config import Config
from ..engine import DataTooLarge, Engine, JobRefused, TooManyJobsRunning, TooManyTasks
from ..jobs import Job
from ..schemas import MAX_SQLITE_INTEGER, ErrorBody, Health, JobRequest, Readiness
from ..store import StoreUnavailable
from ..watch import parse_task_mode
from .auth import CHALLENGE, BearerTokens
from .metrics import HttpCounters, open_registry
from .openapi import build_openapi
from .queries import GetJobQuery, InvalidQuery, ListJobsQuery, parse_query

logger = logging.getLogger(__name__)

JSON = "application/json"
# WebSocket close codes (RFC 6455): normal end, and "the server hit an unexpected condition".
CLOSE_NORMAL = 1000
CLOSE_INTERNAL_ERROR = 1011
# How long a DELETE may take to cancel its job once the client has gone (see delete_job).
DELETE_GRACE = 30.0
# Paths that answer without a token: a load balancer's or orchestrator's probes.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# Seconds a client refused by limits.max_jobs_running is told to wait (Retry-After).
RETRY_AFTER = 1
# Status and limit name (for /metrics) of each refusal the engine can raise.
_REFUSALS: dict[type[JobRefused], tuple[int, str]] = {
    TooManyJobsRunning: (429, "max_jobs_running"),
    TooManyTasks: (413, "max_tasks_per_job"),
    DataTooLarge: (400, "max_data_bytes"),
}

_encoder = msgspec.json.Encoder()
_job_request_decoder = msgspec.json.Decoder(JobRequest)


def json_response(
    body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> TrioResponse:
    return TrioResponse(_encoder.encode(body), status, dict(headers or {}), content_type=JSON)


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> TrioResponse:
    return json_response(ErrorBody(message), status, headers)


def _current_target() -> str:
    """``GET /path`` of the request or WebSocket being handled, for error messages."""
    if has_request_context():
        return f"{request.method} {request.path}"
    if has_websocket_context():
        return f"WebSocket {websocket.path}"
    return "this request"


class WatcherSlots:
    """Open WebSocket watchers per job, bounded by ``limits.max_watchers_per_job``.

    Kept here rather than on the job: a finished job read back from the store is a fresh
    object per request, and its watchers must count against the same job id.
    """

    def __init__(self, per_job: int, counters: HttpCounters) -> None:
        self._per_job = per_job
        self._counters = counters
        self._by_job: dict[int, int] = {}

    @contextmanager
    def claim(self, job_id: int) -> Iterator[bool]:
        """Yields whether a slot was free; a claimed slot is released on exit."""
        held = self._by_job.get(job_id, 0)
        if held >= self._per_job:
            yield False
            return
        self._by_job[job_id] = held + 1
        self._counters.watchers += 1
        try:
            yield True
        finally:
            self._counters.watchers -= 1
            remaining = self._by_job[job_id] - 1
            # Deleted at zero: the table holds only jobs being watched, never every job ever.
            if remaining:
                self._by_job[job_id] = remaining
            else:
                del self._by_job[job_id]


def create_app(engine: Engine, config: Config, health: Callable[[], Health]) -> QuartTrio:
    """The HTTP API over ``engine``.

    Args:
      engine: where jobs are submitted, listed, watched and deleted.
      config: ``config.http.max_body_bytes`` bounds request bodies (413 beyond it),
        ``config.api.tokens`` are the accepted bearer tokens, ``config.limits`` the limits.
      health: returns the current :class:`~pm.schemas.Health` for ``GET /healthz`` (and the
        broker figures of ``GET /metrics``).

    Returns:
      The app, to be served by hypercorn's trio worker in the engine's process.
    """
    # No static folder: every path is an API path, and an unknown one must be a JSON 404.
    app = QuartTrio(__name__, static_folder=None)
    max_body = config.http.max_body_bytes
    # Quart enforces this while the body arrives (chunked bodies have no Content-Length).
    app.config["MAX_CONTENT_LENGTH"] = max_body
    tokens = BearerTokens(config.api.tokens)
    counters = HttpCounters()
    watcher_slots = WatcherSlots(config.limits.max_watchers_per_job, counters)
    metrics_registry = open_registry(engine, health, counters)
    # Built once: the schemas cannot change while the process runs.
    openapi_document = _encoder.encode(build_openapi(bearer_auth=tokens.required))

    # -- authentication -------------------------------------------------------------------

    def unauthorized() -> TrioResponse:
        counters.unauthorized += 1
        # Nothing of what was presented goes into the answer or a log line.
        return error_response(
            401,
            "missing or invalid bearer token: send `Authorization: Bearer <token>`",
            {"WWW-Authenticate": CHALLENGE},
        )

    @app.before_request
    async def authenticate_request() -> TrioResponse | None:
        if request.path in OPEN_PATHS or tokens.allows(request.headers.get("Authorization")):
            return None
        return unauthorized()

    @app.before_websocket
    async def authenticate_websocket() -> TrioResponse | None:
        # Browsers cannot set headers on a WebSocket handshake: ?token= stands in for them.
        if tokens.allows(websocket.headers.get("Authorization"), websocket.args.get("token")):
            return None
        # Returned before accept(): hypercorn sends it as the handshake's HTTP answer.
        return unauthorized()

    # -- errors ---------------------------------------------------------------------------

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> TrioResponse:
        status = error.code or 500
        headers: dict[str, str] = {}
        if isinstance(error, RequestEntityTooLarge):
            message = f"request body is larger than {max_body} bytes"
            # The rest of the body is never read, so this connection cannot carry another
            # request; saying so lets the client stop sending instead of hitting a reset.
            headers["Connection"] = "close"
        elif isinstance(error, MethodNotAllowed):
            allowed = sorted(error.valid_methods or ())
            headers["Allow"] = ", ".join(allowed)
            message = f"{_current_target()} is not allowed; allowed: {', '.join(allowed)}"
        elif isinstance(error, WebsocketMismatch):
            if has_websocket_context():
                message = f"{_current_target()}: this path does not accept WebSocket connections"
            else:
                message = f"{_current_target()}: this path only accepts WebSocket connections"
        elif isinstance(error, NotFound):
            message = f"no such path: {_current_target()}"
        else:
            message = error.description or error.name
        return error_response(status, message, headers)

    @app.errorhandler(InvalidQuery)
    async def invalid_query(error: InvalidQuery) -> TrioResponse:
        return error_response(400, str(error))

    @app.errorhandler(StoreUnavailable)
    async def store_unavailable(error: StoreUnavailable) -> TrioResponse:
        # The disk is full or the database read-only: a condition of the host, not a bug.
        return error_response(503, str(error), {"Retry-After": str(RETRY_AFTER)})

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> TrioResponse:
        # Only bugs get here (bad input is answered above): log it, keep the details private.
        logger.error("%s failed", _current_target(), exc_info=error)
        return error_response(500, "internal server error")

    # -- jobs -----------------------------------------------------------------------------

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
        try:
            job_request = _job_request_decoder.decode(body)
        except msgspec.ValidationError as error:
            return error_response(400, str(error))
        except msgspec.DecodeError as error:
            return error_response(400, f"malformed JSON: {error}")
        try:
            job = await engine.submit(job_request)
        except JobRefused as refusal:
            status, limit = _REFUSALS[type(refusal)]
            counters.refused[limit] += 1
            headers = {"Retry-After": str(RETRY_AFTER)} if status == 429 else {}
            return error_response(status, str(refusal), headers)
        return json_response(job.record.view(), headers={"Location": f"/jobs/{job.id}"})

    @app.get("/jobs")
    async def list_jobs() -> TrioResponse:
        query = parse_query(request.args, ListJobsQuery)
        status = None if query.status is msgspec.UNSET else query.status
        views, total = await engine.list(status=status, limit=query.limit, offset=query.offset)
        return json_response(views, headers={"X-Total-Count": str(total)})

    @app.get("/jobs/<int:job_id>")
    async def get_job(job_id: int) -> TrioResponse:
        query = parse_query(request.args, GetJobQuery)
        job = await find_job(job_id)
        if job is None:
            return error_response(404, f"no job {job_id}")
        return json_response(job.record.view(collection="tasks" if query.collection else "ids"))

    @app.delete("/jobs/<int:job_id>")
    async def delete_job(job_id: int) -> TrioResponse:
        # A client that hangs up cancels this handler; shielded, a DELETE that has begun
        # still removes its job instead of leaving it cancelled but listed. Bounded, so a
        # stuck job cannot hold server shutdown forever.
        with trio.move_on_after(DELETE_GRACE, shield=True):
            view = await engine.delete(job_id) if job_id <= MAX_SQLITE_INTEGER else None
            if view is None:
                return error_response(404, f"no job {job_id}")
            return json_response(view)
        return error_response(503, f"job {job_id} did not stop within {DELETE_GRACE:g} s")

    @app.websocket("/jobs/<int:job_id>/ws")
    async def watch_job(job_id: int) -> TrioResponse | None:
        try:
            tasks = parse_task_mode(websocket.args.get("tasks", "each"))
        except ValueError as error:
            # Returned before accept(): hypercorn sends it as the handshake's HTTP answer.
            return error_response(400, str(error))
        job = await find_job(job_id)
        if job is None:
            return error_response(404, f"no job {job_id}")
        with watcher_slots.claim(job_id) as claimed:
            if not claimed:
                counters.refused["max_watchers_per_job"] += 1
                return error_response(
                    429,
                    f"job {job_id} has {config.limits.max_watchers_per_job} watchers, the "
                    "most allowed (limits.max_watchers_per_job)",
                    {"Retry-After": str(RETRY_AFTER)},
                )
            await websocket.accept()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_discard_incoming)
                    # The watcher never buffers for us: while a send waits on a slow client
                    # it skips task messages, so the job and other watchers never wait.
                    with job.watch(tasks) as watcher:
                        async for payload in watcher:
                            # A str makes a text frame (bytes would make a binary one, a
                            # protocol change); the decode is a small part of a send.
                            await websocket.send(payload.decode())
                    nursery.cancel_scope.cancel()
            except Exception:
                logger.exception("watching job %d failed", job_id)
                await websocket.close(CLOSE_INTERNAL_ERROR, "internal error")
                return None
            await websocket.close(CLOSE_NORMAL)
            return None

    # -- service --------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> TrioResponse:
        # Liveness: answering at all is the signal; the body tells a person what is degraded.
        return json_response(health())

    @app.get("/readyz")
    async def readyz() -> TrioResponse:
        reasons = []
        current = health()
        if not current.broker_connected:
            reasons.append(
                "broker: the gateway is not connected to its MQTT broker; "
                "requests cannot reach devices"
            )
        elif current.answer_path is not None and not current.answer_path.ok:
            reasons.append(
                "answer path: the gateway's probe through the broker did not come back; "
                "device answers may not reach it (it is repairing the subscription)"
            )
        if engine.store.fault is not None:
            reasons.append(
                f"store: the job store cannot commit ({engine.store.fault}); new jobs are refused"
            )
        return json_response(Readiness(ready=not reasons, reasons=reasons), 503 if reasons else 200)

    @app.get("/metrics")
    async def metrics() -> TrioResponse:
        # Declared as text format 0.0.4, which every Prometheus version reads; with our
        # plain metric names the body is the same as the client's newer default format.
        return TrioResponse(
            generate_latest(metrics_registry), 200, content_type=CONTENT_TYPE_PLAIN_0_0_4
        )

    @app.get("/openapi.json")
    async def openapi() -> TrioResponse:
        return TrioResponse(openapi_document, 200, content_type=JSON)

    return app


async def _discard_incoming() -> None:
    """Read and drop what a watching client sends.

    Nothing is expected from it, but unread messages would fill quart's and hypercorn's
    small queues, and then a disconnect could no longer be noticed.
    """
    while True:
        await websocket.receive()
