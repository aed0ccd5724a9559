"""``/jobs/{id}/ws`` served at the ASGI level, in front of quart.

A plain handshake on a plain TCP connection does not even get here: it is served on the
connection itself, with this route's checks and slots (:mod:`pm.http.watch_connection`). What
hypercorn still brings here is the rest: TLS connections, HTTP/2, a handshake after other
requests on a kept-alive connection, any handshake out of the ordinary.

A watcher is one long WebSocket that mostly waits; what it costs the gateway is its handshake
and its writes. Through quart each handshake built a websocket object, its request and app
contexts, a receive queue, a task group and a URL match, and each message was a frame sent
through quart's send wrappers, then hypercorn's (wsproto, its send lock, a shielded scope)
and a socket write of its own. :class:`WatchRoute` wraps quart's ASGI app (``app.asgi_app``):
a WebSocket scope whose path is ``/jobs/<digits>/ws`` is served here, speaking ASGI to
hypercorn for the handshake and the close; every other scope (HTTP requests, the lifespan,
other paths) goes to quart unchanged. On a plain TCP connection the frames are written to the
connection's stream directly (:data:`pm.http.server.CONNECTION_STREAM`), the messages due to
a watcher together in one write, at most one write per update interval
(:func:`send_coalesced`); on TLS they go through hypercorn, one ASGI message each. The
protocol is the same (:mod:`pm.watch`: one JSON text frame per message, the final job
message, then close 1000), also for a job another gateway of a cluster runs, whose feed is
fed from the database (:mod:`pm.stored_job_feed`).

The handshake is checked in quart's order, with the same functions: the origin and the token
(:class:`~pm.http.guards.RequestGuards`), the query string (:mod:`pm.http.queries`, unknown
parameters refused), the ``tasks`` mode, the job (404) and a watcher slot (429,
``limits.max_watchers_per_job``). A refusal is the handshake's HTTP answer, the same JSON
error quart gives (ASGI's ``websocket.http.response`` extension, which hypercorn offers).

Error handling: a watcher that fails after the handshake is logged and closes with 1011. A
client disconnect (or a send that missed ``http.send_timeout``, which hypercorn reports as one)
ends the handler; what the client sends is read and dropped, so hypercorn's small queue of
client messages never fills and a disconnect is always noticed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from functools import lru_cache, partial
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import trio
from werkzeug.datastructures import MultiDict

from ..config import Config
from ..engine import Engine
from ..jobs import Job
from ..schemas import MAX_SQLITE_INTEGER
from ..stored_job_feed import follow_stored_job
from ..watch import TaskMode, parse_task_mode
from .auth import WATCH_SUBPROTOCOL, subprotocol_token
from .coalesced_writes import MAX_WRITE_BYTES as MAX_WRITE_BYTES
from .coalesced_writes import Writer, send_coalesced
from .guards import Refusal, RequestGuards
from .metrics import HttpCounters
from .queries import InvalidQuery, WatchJobQuery, parse_query
from .responses import JSON, RETRY_AFTER, error_body
from .server import CONNECTION_STREAM, SendDeadlineStream
from .watcher_slots import WatcherSlots
from .websocket_frames import text_frames

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The path of quart's "/jobs/<int:job_id>/ws" rule: werkzeug's int converter is \d+ then
# int(), as here, so a path matches here exactly when it would match quart's rule.
WATCH_PATH = re.compile(r"/jobs/(\d+)/ws")
# WebSocket close codes (RFC 6455): normal end, and "the server hit an unexpected condition".
CLOSE_NORMAL = 1000
CLOSE_INTERNAL_ERROR = 1011


class WatchRoute:
    """ASGI middleware: ``/jobs/{id}/ws`` handshakes are served here, the rest by ``inner``.

    Args:
      inner: quart's ASGI app.
      engine: where jobs are found.
      config: ``limits.max_watchers_per_job`` bounds the watchers of one job.
      counters: refusals and open watchers, for ``/metrics``.
      guards: the origin and token checks quart's hooks use too.
    """

    def __init__(
        self,
        inner: ASGIApp,
        engine: Engine,
        config: Config,
        counters: HttpCounters,
        guards: RequestGuards,
    ) -> None:
        self.inner = inner
        self._engine = engine
        self._max_watchers = config.limits.max_watchers_per_job
        self._counters = counters
        self._guards = guards
        self._slots = WatcherSlots(self._max_watchers, counters)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            matched = WATCH_PATH.fullmatch(scope["path"])
            if matched is not None:
                await self._watch(int(matched[1]), scope, receive, send)
                return
        await self.inner(scope, receive, send)

    async def _watch(self, job_id: int, scope: Scope, receive: Receive, send: Send) -> None:
        admitted = await self.admit(job_id, scope)
        if isinstance(admitted, Refusal):
            await _refuse(send, admitted)
            return
        job, tasks, interval = admitted
        with self.slot(job_id) as full:
            if full is not None:
                await _refuse(send, full)
                return
            await send({"type": "websocket.accept", "subprotocol": selected_subprotocol(scope)})
            stream = scope.get("state", {}).get(CONNECTION_STREAM)
            write = _asgi_writer(send) if stream is None else _stream_writer(stream)
            client_stayed = False  # stays so if the client's disconnect cancels the watching
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_until_disconnect, receive, nursery.cancel_scope)
                    if job.runs_elsewhere:
                        # Its feed is fed from the database (pm.stored_job_feed).
                        await nursery.start(self.follow_stored(job, tasks, interval))
                    with job.watch(tasks, interval) as watcher:
                        client_stayed = await send_coalesced(watcher, write)
                    nursery.cancel_scope.cancel()
            except Exception:
                logger.exception("watching job %d failed", job_id)
                await send({"type": "websocket.close", "code": CLOSE_INTERNAL_ERROR})
                return
            if client_stayed:
                await send({"type": "websocket.close", "code": CLOSE_NORMAL})

    def follow_stored(
        self, job: Job, tasks: TaskMode, interval: float
    ) -> Callable[..., Awaitable[None]]:
        """What feeds a watcher of a job another gateway runs: looks at the database at the
        watcher's update interval."""
        engine = self._engine
        return partial(
            follow_stored_job,
            engine.store,
            job,
            interval=max(engine.config.watchers.coalesce_interval, interval),
            tunnel_for=engine.topics.response_topic,
            with_tasks=tasks != "none",
        )

    @contextmanager
    def slot(self, job_id: int) -> Iterator[Refusal | None]:
        """A watcher slot of the job, held until exit: yields None, or the 429 refusal (counted)
        when the job has ``limits.max_watchers_per_job`` watchers already."""
        with self._slots.claim(job_id) as claimed:
            if claimed:
                yield None
                return
            self._counters.refused["max_watchers_per_job"] += 1
            yield Refusal(
                429,
                f"job {job_id} has {self._max_watchers} watchers, the most allowed "
                "(limits.max_watchers_per_job)",
                {"Retry-After": str(RETRY_AFTER)},
            )

    async def admit(self, job_id: int, scope: Scope) -> tuple[Job, TaskMode, float] | Refusal:
        """The job, the ``tasks`` mode and the snapshot ``interval`` a handshake asks for, or
        why it is refused (a bug is logged and refused with 500)."""
        try:
            return await self._admit(job_id, scope)
        except Exception as error:
            # Only bugs get here (bad input is refused above), as with quart's routes: log
            # it with the path (never the query string: ?token=), keep the details private.
            logger.error("WebSocket %s failed", scope["path"], exc_info=error)
            return Refusal(500, "internal server error")

    async def _admit(self, job_id: int, scope: Scope) -> tuple[Job, TaskMode, float] | Refusal:
        """The job, the ``tasks`` mode and the snapshot ``interval`` a handshake asks for, or
        why it is refused."""
        headers = _headers(scope)
        query_token, query = _watch_query(scope["query_string"])
        # Browsers cannot set headers on a handshake: the dashboard offers its token as a
        # subprotocol (pm.http.auth); ?token= (which lands in URLs) is still accepted.
        offered = subprotocol_token(scope.get("subprotocols") or [])
        refusal = self._guards.check_websocket(
            headers.get("origin"),
            headers.get("host"),
            headers.get("authorization"),
            offered or query_token,
        )
        if refusal is not None:
            return refusal
        if isinstance(query, str):
            return Refusal(400, query)
        tasks, interval = query
        job = await self._engine.find(job_id) if job_id <= MAX_SQLITE_INTEGER else None
        if job is None:
            return Refusal(404, f"no job {job_id}")
        return job, tasks, interval


@lru_cache(maxsize=256)
def _watch_query(query_string: bytes) -> tuple[str | None, tuple[TaskMode, float] | str]:
    """A watcher's query string: its ``token`` (if any), and its ``tasks`` mode and snapshot
    ``interval`` or why it is refused (a 400's message, naming the parameter).

    Parsed once per distinct query string, not per handshake: the watchers of a job mostly
    ask the same (werkzeug's parsing and msgspec's validation were a twentieth of a
    watcher's connection in a profile of 4,000)."""
    # As werkzeug parses a query string (invalid bytes stay percent-encoded).
    args = MultiDict(
        parse_qsl(query_string.decode(), keep_blank_values=True, errors="werkzeug.url_quote")
    )
    token = args.get("token")
    try:
        query = parse_query(args, WatchJobQuery)
        tasks = parse_task_mode(query.tasks)
    except (InvalidQuery, ValueError) as error:
        return token, str(error)
    return token, (tasks, 0.0 if query.interval is msgspec.UNSET else query.interval)


def _stream_writer(stream: SendDeadlineStream) -> Writer:
    """Frames written to the connection's stream directly, several per write (plain TCP)."""

    async def write(messages: list[bytes]) -> bool:
        try:
            # Shielded as hypercorn's own writes are: a cancelled write would leave half a
            # frame on the connection; the stream's send deadline bounds it instead.
            with trio.CancelScope(shield=True):
                await stream.send_all(text_frames(messages))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client is gone, or missed http.send_timeout (the stream closed itself);
            # hypercorn notices on its side and ends the connection.
            return False
        return True

    return write


def _asgi_writer(send: Send) -> Writer:
    """Frames sent through hypercorn, one ASGI message each (TLS connections)."""

    async def write(messages: list[bytes]) -> bool:
        for message in messages:
            # A str makes a text frame (bytes would make a binary one, a protocol change).
            await send({"type": "websocket.send", "text": message.decode()})
        return True

    return write


async def _until_disconnect(receive: Receive, watching: trio.CancelScope) -> None:
    """Read and drop what the client sends; at its disconnect, stop watching."""
    while (await receive())["type"] != "websocket.disconnect":
        pass
    watching.cancel()


def _headers(scope: Scope) -> dict[str, str]:
    """The handshake's headers by lower-case name (the first of repeated ones, as quart's
    ``headers.get``), decoded as latin-1 as quart does."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return found


def selected_subprotocol(scope: Scope) -> str | None:
    """The subprotocol the answer selects: ``pm.watch`` if offered (a browser that offered
    subprotocols fails the connection unless one is selected), else none."""
    return WATCH_SUBPROTOCOL if WATCH_SUBPROTOCOL in (scope.get("subprotocols") or []) else None


def refusal_parts(refusal: Refusal) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of a refused handshake's answer: the JSON error quart's routes
    give."""
    body = error_body(refusal.message)
    headers = [
        (b"content-type", JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in refusal.headers.items()),
    ]
    return headers, body


async def _refuse(send: Send, refusal: Refusal) -> None:
    """The refusal as the handshake's HTTP answer."""
    headers, body = refusal_parts(refusal)
    await send(
        {"type": "websocket.http.response.start", "status": refusal.status, "headers": headers}
    )
    await send({"type": "websocket.http.response.body", "body": body})
