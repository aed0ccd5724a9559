"""Job control routes: ``POST /jobs/{id}/pause``, ``/resume``, ``/cancel`` and ``/retry``.

Kept beside :mod:`pm.http.job_routes`; registered by :mod:`pm.http.app` after its guards, so
the origin and token checks hold here too (a browser's cross-site POST is refused with 403).

Error handling: an unknown job is a 404; a job whose state does not allow the action
(pause a paused or finished job, resume one not paused, cancel a finished one, retry a
running job or one with nothing to retry) is a 409 whose message says why; a retry refused
by ``[limits]`` answers as ``POST /jobs`` would (429, 413, 400).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from quart import g, request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from ..engine import Engine, JobRefused, JobStateError
from ..job_retry import NothingToRetry, retry_request
from ..schemas import MAX_SQLITE_INTEGER, JobView
from .queries import RetryJobQuery
from .responses import error_response, json_response

#: A refusal's status and ``/metrics`` limit name, as ``POST /jobs`` answers it.
RefusalAnswer = Callable[[JobRefused], TrioResponse]


async def body_refusal() -> TrioResponse | None:
    """A 400 unless the request's body is empty or ``{}``: these requests take none, and a
    body that would mean something (a misdirected job) must not be silently dropped."""
    body = await request.get_data(cache=False)
    assert isinstance(body, bytes)
    if not body.strip():
        return None
    try:
        if msgspec.json.decode(body) == {}:
            return None
    except msgspec.DecodeError:
        pass
    return error_response(400, f"{request.path} takes no body (send none, or {{}})")


def add_control_routes(app: QuartTrio, engine: Engine, refused: RefusalAnswer) -> None:
    """Register the control routes on ``app``; ``refused`` answers a retry the limits
    refuse (shared with ``POST /jobs``)."""

    async def control(
        job_id: int, action: Callable[[int], Awaitable[JobView | None]]
    ) -> TrioResponse:
        if (refusal := await body_refusal()) is not None:
            return refusal
        if job_id > MAX_SQLITE_INTEGER:
            return error_response(404, f"no job {job_id}")
        try:
            view = await action(job_id)
        except JobStateError as error:
            return error_response(409, str(error))
        if view is None:
            return error_response(404, f"no job {job_id}")
        return json_response(view)

    @app.post("/jobs/<int:job_id>/pause")
    async def pause_job(job_id: int) -> TrioResponse:
        return await control(job_id, engine.pause)

    @app.post("/jobs/<int:job_id>/resume")
    async def resume_job(job_id: int) -> TrioResponse:
        return await control(job_id, engine.resume)

    @app.post("/jobs/<int:job_id>/cancel")
    async def cancel_job(job_id: int) -> TrioResponse:
        return await control(job_id, engine.cancel)

    @app.post("/jobs/<int:job_id>/retry")
    async def retry_job(job_id: int) -> TrioResponse:
        query = g.query
        assert isinstance(query, RetryJobQuery)
        if (refusal := await body_refusal()) is not None:
            return refusal
        job = await engine.find(job_id) if job_id <= MAX_SQLITE_INTEGER else None
        if job is None:
            return error_response(404, f"no job {job_id}")
        try:
            retry = retry_request(job.record, query.statuses, engine.wall_clock())
            created = await engine.submit(retry)
        except NothingToRetry as error:
            return error_response(409, str(error))
        except JobRefused as refusal:
            return refused(refusal)
        return json_response(created.record.view(), headers={"Location": f"/jobs/{created.id}"})
