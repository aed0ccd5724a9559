"""The REST and WebSocket API: a quart-trio app over an :class:`~pm.engine.Engine`.

Handlers stay thin: validate (msgspec), call the engine, encode (msgspec). Every response,
errors included, is JSON; errors are ``{"message": "..."}`` (:class:`~pm.schemas.ErrorBody`,
:mod:`pm.http.responses`). This module holds the guards, the error handlers and the service
routes (health, metrics, OpenAPI); the job routes are in :mod:`pm.http.job_routes`, the device
routes in :mod:`pm.http.device_routes`.

Error handling: bad input is a 4xx that says what was wrong (msgspec's message names the
field); quart's HTML error pages are replaced by JSON; anything unexpected is logged and
answers a 500 JSON error. The job watchers' WebSocket (``/jobs/{id}/ws``) is served in front
of quart (:mod:`pm.http.watch_route`), with the same guards; a watcher that fails after the
handshake closes with 1011.

Health: ``/healthz`` is liveness (200 whenever the process answers, with what is degraded in
the body); ``/readyz`` is readiness (503 while the broker is disconnected, the answer path is
lost or the job store cannot commit, with the reasons). A store that cannot commit makes
``POST /jobs`` a 503 (:class:`~pm.store.StoreUnavailable`) while reads go on.

Security, in the order checked: a browser request (WebSocket handshakes included) from a
site that is neither the gateway itself nor in ``http.allowed_origins`` is refused with 403
(:mod:`pm.http.origins`); with ``api.tokens`` set, every route but ``/healthz``,
``/readyz`` and the dashboard's static files (``/``, ``/ui/``) needs a bearer token (401
before the path is looked at, so an unknown path says nothing either); unknown query
parameters are refused with 400 on every endpoint; a body (POST, or any other method that
sends one) must be ``application/json`` (415); ``[limits]`` refuse what would cost the
gateway too much (413, 400, 429), each naming its limit and counted in ``/metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from quart import g, has_request_context, has_websocket_context, request, websocket
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import WebsocketMismatch

from ..config import Config
from ..device_directory import DeviceDirectory, fleet_serving
from ..engine import Engine
from ..schemas import Health, Readiness
from ..store import StoreUnavailable
from .auth import BearerTokens, subprotocol_token
from .bodies import BodyRefused, check_json_media_type
from .device_routes import add_device_routes
from .fleet_routes import add_fleet_routes
from .guards import Refusal, RequestGuards
from .job_routes import add_job_routes
from .metrics import HttpCounters, open_registry
from .openapi import build_openapi
from .origins import AllowedOrigins, cors_headers, preflight_headers
from .queries import InvalidQuery, parse_endpoint_query
from .responses import JSON, RETRY_AFTER, encode_json, error_response, json_response
from .ui_routes import UI_ENDPOINTS, add_ui_routes
from .watch_route import WatchRoute

logger = logging.getLogger(__name__)

# Paths that answer without a token: a load balancer's or orchestrator's probes.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})

# Methods whose body, if they send one, must be JSON; a POST must always send one.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _current_target() -> str:
    """``GET /path`` of the request or WebSocket being handled, for error messages and logs.

    The path only, never the query string: a WebSocket's ``?token=`` would land in the log.
    """
    if has_request_context():
        return f"{request.method} {request.path}"
    if has_websocket_context():
        return f"WebSocket {websocket.path}"
    return "this request"


def create_app(
    engine: Engine,
    config: Config,
    health: Callable[[], Health],
    counters: HttpCounters | None = None,
) -> QuartTrio:
    """The HTTP API over ``engine``.

    Args:
      engine: where jobs are submitted, listed, watched and deleted.
      config: ``config.http.max_body_bytes`` bounds request bodies (413 beyond it),
        ``config.http.allowed_origins`` are the other sites whose pages may use the API,
        ``config.api.tokens`` are the accepted bearer tokens, ``config.limits`` the limits.
      health: returns the current :class:`~pm.schemas.Health` for ``GET /healthz`` (and the
        broker figures of ``GET /metrics``).
      counters: what ``GET /metrics`` reports of the HTTP layer; shared with the server
        (:func:`pm.http.serve` counts send timeouts in it). Default: the app's own.

    Returns:
      The app, to be served by hypercorn's trio worker in the engine's process.
    """
    # No static folder: every path is an API path, and an unknown one must be a JSON 404.
    app = QuartTrio(__name__, static_folder=None)
    max_body = config.http.max_body_bytes
    # Quart enforces this while the body arrives (chunked bodies have no Content-Length).
    app.config["MAX_CONTENT_LENGTH"] = max_body
    tokens = BearerTokens(config.api.tokens)
    origins = AllowedOrigins(config.http.allowed_origins)
    counters = HttpCounters() if counters is None else counters
    metrics_registry = open_registry(engine, health, counters)
    # Built once: the schemas cannot change while the process runs.
    openapi_document = encode_json(build_openapi(bearer_auth=tokens.required))

    # -- origin, authentication, query string, content type ---------------------------------

    guards = RequestGuards(origins, tokens, counters)

    def refused(refusal: Refusal) -> TrioResponse:
        return error_response(refusal.status, refusal.message, refusal.headers)

    @app.before_request
    async def guard_request() -> TrioResponse | None:
        origin = request.headers.get("Origin")
        if (refusal := guards.check_origin(origin, request.headers.get("Host"))) is not None:
            return refused(refusal)
        if origin is not None and request.method == "OPTIONS":
            # A CORS preflight (only allowed origins get here) carries no token: answered
            # before authentication.
            if "Access-Control-Request-Method" in request.headers:
                return TrioResponse(b"", 204, preflight_headers(origin))
        open_path = request.path in OPEN_PATHS or request.endpoint in UI_ENDPOINTS
        if not open_path and (refusal := guards.check_token(request.headers.get("Authorization"))):
            return refused(refusal)
        if request.url_rule is None or request.endpoint is None:
            return None  # no route: routing answers 404 or 405
        g.query = parse_endpoint_query(request.endpoint, request.args)
        if request.method == "POST" or (request.method in _BODY_METHODS and _has_body()):
            check_json_media_type(request.mimetype, request.mimetype_params.get("charset"))
        return None

    @app.after_request
    async def allow_listed_origin(response: TrioResponse) -> TrioResponse:
        # Every answer is what its Content-Type says: a browser must never sniff a JSON
        # error that echoes input into HTML.
        response.headers["X-Content-Type-Options"] = "nosniff"
        origin = request.headers.get("Origin")
        if origin is not None and origins.listed(origin):
            response.headers.update(cors_headers(origin))
        return response

    @app.before_websocket
    async def guard_websocket() -> TrioResponse | None:
        # Responses returned here come before accept(): hypercorn sends them as the
        # handshake's HTTP answer. /jobs/{id}/ws never gets here: WatchRoute serves it in
        # front of quart, with the same guards. Browsers cannot set headers on a handshake:
        # the dashboard offers its token as a subprotocol (pm.http.auth); ?token= (which
        # lands in URLs) is still accepted.
        headers = websocket.headers
        offered = subprotocol_token(websocket.requested_subprotocols)
        refusal = guards.check_websocket(
            headers.get("Origin"),
            headers.get("Host"),
            headers.get("Authorization"),
            offered or websocket.args.get("token"),
        )
        if refusal is not None:
            return refused(refusal)
        if websocket.url_rule is not None and websocket.endpoint is not None:
            g.query = parse_endpoint_query(websocket.endpoint, websocket.args)
        return None

    # -- errors ---------------------------------------------------------------------------

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> TrioResponse:
        status = error.code or 500
        headers: dict[str, str] = {}
        if isinstance(error, RequestEntityTooLarge):
            counters.refused["max_body_bytes"] += 1
            message = f"request body is larger than {max_body} bytes (http.max_body_bytes)"
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

    @app.errorhandler(BodyRefused)
    async def body_refused(error: BodyRefused) -> TrioResponse:
        if error.limit is not None:
            counters.refused[error.limit] += 1
        elif error.status == 415:
            counters.rejected["content_type"] += 1
        return error_response(error.status, str(error))

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> TrioResponse:
        # Only bugs get here (bad input is answered above): log it, keep the details private.
        logger.error("%s failed", _current_target(), exc_info=error)
        return error_response(500, "internal server error")

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

    add_job_routes(app, engine, config, counters)
    # Watchers are served in front of quart (pm.http.watch_route): a thousand of them cost
    # what their frames cost, not quart's per-connection and per-frame machinery.
    app.asgi_app = WatchRoute(app.asgi_app, engine, config, counters, guards)  # type: ignore[method-assign]
    directory = DeviceDirectory(
        engine.presence, engine.store, fleet_serving(engine), engine.topics.response_topic
    )
    add_device_routes(app, directory, json_response, error_response)
    add_fleet_routes(app, engine, health)
    add_ui_routes(app)

    @app.get("/openapi.json")
    async def openapi() -> TrioResponse:
        return TrioResponse(openapi_document, 200, content_type=JSON)

    return app


def _has_body() -> bool:
    """Whether the request being handled sends a body (announced, or chunked)."""
    if request.content_length is not None:
        return request.content_length > 0
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()
