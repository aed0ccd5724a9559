"""The job-control part of the OpenAPI document: ``POST /jobs/{id}/pause``, ``/resume``,
``/cancel``, ``/retry``; and the dry run's answer on ``POST /jobs``.

Bodies come from :mod:`pm.schemas` and :mod:`pm.dry_run`, the retry's query from
:mod:`pm.http.queries`; :func:`pm.http.openapi.build_openapi` merges it all in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ..dry_run import DryRunPlan
from .openapi_fragments import REF_TEMPLATE, query_parameters
from .queries import RetryJobQuery, SubmitJobQuery

ErrorResponse = Callable[[str], dict[str, Any]]

DRY_RUN_EXAMPLE = {
    "dryRun": True,
    "totalCount": 3,
    "deviceCount": 3,
    "destinations": {"online": 2, "offline": 1, "unknown": 0},
    "predictedDuration": 1.0,
    "startsAt": None,
    "latenciesKnown": 0,
    "assumedLatency": 1.0,
    "basis": "one task at a time per device; 0 devices' recent median latency, 1 s assumed "
    "for the other 3; ramp, retries and waits for offline devices not counted",
}

_CONTROL = {
    "pause": (
        "pauseJob",
        "Pause: nothing new is sent, tasks in flight finish; the job reads paused",
        "the job is finished or paused already",
    ),
    "resume": (
        "resumeJob",
        "Resume a paused job (paused by a user or an abort criterion)",
        "the job is finished or not paused",
    ),
    "cancel": (
        "cancelJob",
        "Cancel gracefully: unsent tasks end cancelled, tasks in flight finish, then the job "
        "ends cancelled; unlike DELETE the job and its tasks stay readable",
        "the job is finished or stopping already",
    ),
}


def submit_query_parameters() -> list[dict[str, Any]]:
    """``POST /jobs``'s query parameters (``dryRun``)."""
    _, components = msgspec.json.schema_components([SubmitJobQuery], ref_template=REF_TEMPLATE)
    return query_parameters(components["SubmitJobQuery"])


def dry_run_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The schema of the dry run's answer and the components it refers to."""
    (plan,), components = msgspec.json.schema_components([DryRunPlan], ref_template=REF_TEMPLATE)
    return plan, components


def build_control_paths(
    error: ErrorResponse,
    job_id: dict[str, Any],
    job_view: dict[str, Any],
    retry_after: dict[str, Any],
) -> dict[str, Any]:
    """The control path items by path.

    Args:
      error: builds an error response object from its description.
      job_id: the ``{id}`` path parameter.
      job_view: the schema (a reference) of a job.
      retry_after: the ``Retry-After`` header object.
    """
    (_,), query_components = msgspec.json.schema_components(
        [RetryJobQuery], ref_template=REF_TEMPLATE
    )
    # No body is needed, but a POST must be declared JSON (a browser cannot send that to
    # another site without asking first): an empty body, or {}.
    empty_body = {
        "required": False,
        "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
    }
    common = {
        "400": error("a body other than nothing or {}, or an unknown query parameter"),
        "404": error("no such job"),
        "415": error("the request is not declared `Content-Type: application/json`"),
    }
    paths: dict[str, Any] = {}
    for action, (operation_id, summary, conflict) in _CONTROL.items():
        paths[f"/jobs/{{id}}/{action}"] = {
            "parameters": [job_id],
            "post": {
                "operationId": operation_id,
                "summary": summary,
                "requestBody": empty_body,
                "responses": {
                    "200": {
                        "description": "the job's snapshot after the request",
                        "content": {"application/json": {"schema": job_view}},
                    },
                    **common,
                    "409": error(
                        f"wrong state: {conflict} (with cluster.enabled, as the job's row has it: "
                        "of two gateways racing one request, one wins and the other gets this), "
                        "or the job runs on another gateway sharing the database without "
                        "cluster.enabled (the message says which)"
                    ),
                },
            },
        }
    paths["/jobs/{id}/retry"] = {
        "parameters": [job_id],
        "post": {
            "operationId": "retryJob",
            "summary": "A new job with the same commands and options, for the tasks that "
            "ended error, timeout, expired or cancelled (or those of ?status=)",
            "parameters": query_parameters(query_components["RetryJobQuery"]),
            "requestBody": empty_body,
            "responses": {
                "200": {
                    "description": "the new job",
                    "headers": {
                        "Location": {"description": "/jobs/{id}", "schema": {"type": "string"}}
                    },
                    "content": {"application/json": {"schema": job_view}},
                },
                **common,
                "409": error(
                    "the job is still running, has no task in those statuses, or its "
                    "schedule has ended"
                ),
                "413": error("more tasks than limits.max_tasks_per_job"),
                "429": {
                    **error("limits.max_jobs_running jobs are running already"),
                    "headers": retry_after,
                },
                "503": {
                    **error("the job store cannot write: nothing was created"),
                    "headers": retry_after,
                },
            },
        },
    }
    return paths
