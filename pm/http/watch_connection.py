"""Watchers' connections served without hypercorn: the cheapest path to a WebSocket watcher.

After :mod:`pm.http.watch_route` served ``/jobs/{id}/ws`` in front of quart, what a watcher
still cost the gateway was mostly hypercorn's handling of its connection: h11 parsing the
handshake, its WebSocket stream and wsproto handshake, a task for the app and a queue to it,
its idle-timer task restarted at each state change, the 101 answer and the close frame each
through its send lock and a shielded scope (bench/README.md, scenario 6, has the profile).

:class:`WatchConnections` is offered each plain TCP connection before hypercorn
(:data:`pm.http.server.ConnectionClaim`). It reads the request head; if it is the plainest
WebSocket handshake to ``/jobs/{id}/ws`` (:mod:`pm.http.websocket_handshake`) the connection
is served here to its end: the same checks as the route (:meth:`WatchRoute.admit` and
:meth:`WatchRoute.slot`, so a refusal says and counts the same), the same answers as
hypercorn writes them, the same messages, each write one system call when the socket takes it
at once (:meth:`~pm.http.server.SendDeadlineStream.send_now`). The watchers of a running job
with the same mode and interval are written together, one lead watcher's messages framed once
for all of them (:mod:`pm.watch_group`), the 101 answer and the first message in one write;
a watcher of a job already final gets the 101 answer, the final message and the close
frame in one write; any other watcher has its own writes
(:func:`~pm.http.watch_route.send_coalesced`). What the client sends is parsed by wsproto
(:class:`~pm.http.watcher_socket.WatcherSocket`): pings are answered, messages dropped (a
message over ``http.max_websocket_message_bytes`` closes with 1009, as hypercorn does), a
close frame is answered and ends the watcher. Every other connection (another path, an
extension offer when ``http.websocket_compression`` is on, any unusual handshake) goes to
hypercorn with the bytes read put back, and is served as before; so is every connection
after a refused handshake (keep-alive, as hypercorn does).

Error handling: a head not complete within ``http.idle_timeout`` closes the connection (as
hypercorn's idle timer does). A watcher that fails after the handshake is logged and closes
with 1011. A client gone (or a write that missed ``http.send_timeout``) ends the watcher.
After the server's close frame the client gets ``http.idle_timeout`` to answer it; the
connection is closed then in any case. A graceful stop of the server cancels the watcher
with the other connections once its ``graceful_timeout`` is over.
"""

from __future__ import annotations

import logging
import time
from functools import partial

import trio
from quart_trio import QuartTrio

from ..config import HttpConfig
from ..jobs import Job
from ..watch import TaskMode
from ..watch_group import WatchGroup
from .guards import Refusal
from .server import SendDeadlineStream
from .watch_route import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    WATCH_PATH,
    WatchRoute,
    refusal_parts,
    selected_subprotocol,
    send_coalesced,
)
from .watcher_socket import RECEIVE_BYTES, WatcherSocket
from .websocket_frames import ClientFramesAfterClose, close_frame, text_frames
from .websocket_handshake import (
    WatchHandshake,
    accept_response,
    parse_watch_handshake,
    refusal_response,
)

logger = logging.getLogger(__name__)

# A head longer than this is not a plain handshake: hypercorn (h11's limit is 16 KiB) reads it.
MAX_HEAD_BYTES = 16 * 1024
_END_OF_HEAD = b"\r\n\r\n"
# What a request head the watchers' path might take begins with; another beginning is
# handed to hypercorn as soon as it is seen.
_WATCH_PREFIX = b"GET /jobs/"


class WatchConnections:
    """Serves the watchers' plain handshakes on the connection itself (see the module).

    Args:
      route: the watchers' ASGI route, whose checks, slots and counters are used here too.
      http: ``idle_timeout``, ``max_websocket_message_bytes`` and ``websocket_compression``.
    """

    def __init__(self, route: WatchRoute, http: HttpConfig) -> None:
        self._route = route
        self._idle_timeout = http.idle_timeout
        self._max_message = http.max_websocket_message_bytes
        self._compression = http.websocket_compression
        # By (the job's feed, mode, interval): watchers written to together.
        self._groups: dict[tuple[int, TaskMode, float], WatchGroup] = {}

    async def claim(self, stream: SendDeadlineStream) -> bool:
        """Serve ``stream`` if it opens with a watcher's plain handshake (True), else put back
        what was read and leave it to hypercorn (False).

        Error handling: a client gone (reset, closed) ends its connection; any other error is
        a bug, logged, and ends that connection only (it must not reach the server's
        nursery, which would end every connection)."""
        try:
            taken = await self._claim(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            taken = True
        except Exception:
            logger.exception("a watcher's connection failed")
            taken = True
        if taken:
            stream.close_now()
        return taken

    async def _claim(self, stream: SendDeadlineStream) -> bool:
        # Most clients' heads are there when the connection's task first runs: taken at once,
        # without the idle timer's cancel scope or a trip through trio's scheduler.
        at_once = stream.receive_now(RECEIVE_BYTES)
        read = None if at_once is None else _split_head(at_once)
        if read is None:
            with trio.move_on_after(self._idle_timeout):
                read = await _read_head(stream, at_once or b"")
        if read is None:
            # No complete head within idle_timeout: closed, as hypercorn's idle timer does.
            await trio.aclose_forcefully(stream)
            return True
        head, rest = read
        handshake = None if head is None else parse_watch_handshake(head)
        matched = None if handshake is None else WATCH_PATH.fullmatch(handshake.path)
        if (
            head is None
            or handshake is None
            or matched is None
            or (handshake.extensions_offered and self._compression)
        ):
            stream.unread(rest if head is None else head + _END_OF_HEAD + rest)
            return False
        await self._serve(stream, int(matched[1]), handshake, rest)
        return True

    async def _serve(
        self, stream: SendDeadlineStream, job_id: int, handshake: WatchHandshake, rest: bytes
    ) -> None:
        """The watcher, or its refusal, to the connection's end."""
        scope = {
            "type": "websocket",
            "path": handshake.path,
            "query_string": handshake.query_string,
            "headers": handshake.headers,
            "subprotocols": handshake.subprotocols,
        }
        admitted = await self._route.admit(job_id, scope)
        if isinstance(admitted, Refusal):
            await _refuse(stream, admitted)
            return
        job, tasks, interval = admitted
        with self._route.slot(job_id) as full:
            if full is not None:
                await _refuse(stream, full)
                return
            # (The connection is closed by claim when this returns.)
            answer = accept_response(handshake.key, selected_subprotocol(scope), time.time())
            final = None if job.runs_elsewhere else job.feed.final_message
            if final is not None:
                await self._serve_final(stream, answer, final, rest)
                return
            client = WatcherSocket(stream, self._max_message)
            client.receive(rest)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.read_until_closed, nursery.cancel_scope)
                with client.watching:
                    try:
                        if await self._watch(client, job, tasks, interval, answer, nursery):
                            await client.close(CLOSE_NORMAL)
                    except Exception:
                        logger.exception("watching job %d failed", job_id)
                        if client.written_any or await client.write(answer):
                            await client.close(CLOSE_INTERNAL_ERROR)
                # The client answers the close frame; a client that does not is not waited
                # for long.
                nursery.cancel_scope.deadline = trio.current_time() + self._idle_timeout

    async def _serve_final(
        self, stream: SendDeadlineStream, answer: bytes, final: bytes, rest: bytes
    ) -> None:
        """A watcher of a job already final: the handshake's ``answer``, the final message and
        the close frame in one write, then, in this same task, the client's frames (``rest``
        first) walked until its own close frame (``http.idle_timeout`` at most).

        All a watcher of its own would send (:class:`~pm.watch.Watcher` gives such a watcher
        the final message alone), without a watcher, a second task, wsproto or three writes
        (bench/README.md, "2026-12-01 late", has the profile). After the close frame nothing
        is sent, pings are not answered (:class:`ClientFramesAfterClose`).

        Error handling: a client gone raises as the stream does (:meth:`claim` ends the
        connection)."""
        data = answer + text_frames([final]) + close_frame(CLOSE_NORMAL)
        written = stream.send_now(data)
        if written < len(data):
            # Shielded as every write here: half a frame cannot be taken back.
            with trio.CancelScope(shield=True):
                await stream.send_all(memoryview(data)[written:])
        frames = ClientFramesAfterClose()
        if frames.feed(rest):
            return
        with trio.move_on_after(self._idle_timeout):
            while received := await stream.receive_some(RECEIVE_BYTES):
                if frames.feed(received):
                    return

    async def _watch(
        self,
        client: WatcherSocket,
        job: Job,
        tasks: TaskMode,
        interval: float,
        answer: bytes,
        nursery: trio.Nursery,
    ) -> bool:
        """The handshake's ``answer``, then the watcher's messages to the client; False if the
        client went away meanwhile.

        A job that runs here and is not final yet is watched in a group (:mod:`pm.watch_group`)
        with its other watchers of the same mode and interval, the answer and the first
        message in one write; the others (another gateway's job, fed per watcher from the
        database; a final job, one message) on their own. The group's writes may run in a
        task of this connection's ``nursery`` (:meth:`WatchGroup.watch`)."""
        if not job.runs_elsewhere and job.feed.final_message is None:
            group = self._group(job, tasks, interval)
            with group.membership(client, answer) as member:
                return await group.watch(member, nursery)
        if not await client.write(answer):
            return False
        async with trio.open_nursery() as feeding:
            if job.runs_elsewhere:
                # Its feed is fed from the database (pm.stored_job_feed) while it is watched.
                await feeding.start(self._route.follow_stored(job, tasks, interval))
            with job.watch(tasks, interval) as watcher:
                client_stayed = await send_coalesced(watcher, client.write_messages)
            feeding.cancel_scope.cancel()
        return client_stayed

    def _group(self, job: Job, tasks: TaskMode, interval: float) -> WatchGroup:
        """The group of the job's watchers of this mode and interval, made if none yet."""
        key = (id(job.feed), tasks, interval)
        group = self._groups.get(key)
        if group is None:
            # The group holds the feed until its last member leaves: the key cannot be reused.
            group = WatchGroup(
                job.feed, job.watch(tasks, interval), tasks, partial(self._groups.pop, key)
            )
            self._groups[key] = group
        return group


def watch_connections(app: QuartTrio, http: HttpConfig) -> WatchConnections:
    """The watchers' connections of an app made by :func:`pm.http.create_app` (its ASGI app is
    the watchers' route), for :func:`pm.http.serve`'s ``claim_connection``."""
    route = app.asgi_app
    if not isinstance(route, WatchRoute):
        raise TypeError(f"{app!r} does not serve the watchers' route (made by create_app?)")
    return WatchConnections(route, http)


async def _read_head(stream: SendDeadlineStream, data: bytes) -> tuple[bytes | None, bytes]:
    """The request head (without its blank line) and what followed it, ``data`` (read
    already) first; or None and all that was read, as soon as it cannot be a watcher's
    handshake."""
    while True:
        chunk = await stream.receive_some(RECEIVE_BYTES)
        if not chunk:
            return None, data
        data += chunk
        if (split := _split_head(data)) is not None:
            return split


def _split_head(data: bytes) -> tuple[bytes | None, bytes] | None:
    """``data`` as the request head and what followed it; None and ``data`` if it cannot be a
    watcher's handshake; None if the head may go on."""
    if not data.startswith(_WATCH_PREFIX[: len(data)]):
        return None, data
    head, found, rest = data.partition(_END_OF_HEAD)
    if found:
        return head, rest
    if len(data) > MAX_HEAD_BYTES:
        return None, data
    return None


async def _refuse(stream: SendDeadlineStream, refusal: Refusal) -> None:
    """The refusal as the handshake's HTTP answer, then the connection closed (as hypercorn
    does after a refused handshake)."""
    headers, body = refusal_parts(refusal)
    try:
        await stream.send_all(refusal_response(refusal.status, headers, body, time.time()))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client is gone
    finally:
        await stream.aclose()
