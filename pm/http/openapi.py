"""The OpenAPI 3.1 document of the HTTP API, generated from the msgspec Structs.

Bodies come from :mod:`pm.schemas`, query parameters from :mod:`pm.http.queries`; only the
prose (summaries, descriptions) is written here; the device paths are built in
:mod:`pm.http.openapi_devices`. OpenAPI 3.1 uses JSON Schema 2020-12, which
is what msgspec emits, so its schemas go in unchanged.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import msgspec

from ..schemas import (
    MAX_SQLITE_INTEGER,
    ErrorBody,
    Health,
    JobRequest,
    JobView,
    Readiness,
    TaskView,
    WatchMessage,
)
from .openapi_control import (
    DRY_RUN_EXAMPLE,
    build_control_paths,
    dry_run_schema,
    submit_query_parameters,
)
from .openapi_devices import build_device_paths
from .openapi_examples import JOB_REQUEST_EXAMPLES
from .openapi_fragments import REF_TEMPLATE, json_content, query_parameters
from .queries import JobQuery, JobTasksQuery, ListJobsQuery, WatchJobQuery


def _package_version() -> str:
    try:
        return metadata.version("sanji-puppetmaster")
    except metadata.PackageNotFoundError:
        return "0.0.0"  # running from a tree that was never installed


def build_openapi(
    title: str = "puppetmaster", version: str | None = None, *, bearer_auth: bool = False
) -> dict[str, Any]:
    """The OpenAPI document as plain data (encode it with msgspec).

    Args:
      bearer_auth: the API requires a bearer token (``api.tokens`` is set): every operation
        but ``/healthz`` and ``/readyz`` then documents it and its 401.
    """
    (
        (
            job_request,
            job_view,
            job_list,
            task_list,
            error_body,
            health,
            readiness,
            watch_message,
        ),
        components,
    ) = msgspec.json.schema_components(
        [
            JobRequest,
            JobView,
            list[JobView],
            list[TaskView],
            ErrorBody,
            Health,
            Readiness,
            WatchMessage,
        ],
        ref_template=REF_TEMPLATE,
    )
    # The query Structs are inlined as parameters, not published as components.
    (_, _, _, _), query_components = msgspec.json.schema_components(
        [ListJobsQuery, JobQuery, JobTasksQuery, WatchJobQuery], ref_template=REF_TEMPLATE
    )

    def error(description: str) -> dict[str, Any]:
        return {"description": description, "content": json_content(error_body)}

    job_id = {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "job id",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SQLITE_INTEGER},
    }
    job_response = {"description": "the job", "content": json_content(job_view)}
    device_paths, device_components = build_device_paths(error)
    components.update(device_components)
    retry_after = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    dry_run_plan, dry_run_components = dry_run_schema()
    components.update(dry_run_components)
    control_paths = build_control_paths(error, job_id, job_view, retry_after)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version or _package_version(),
            "description": "Dispatch batches of Sanji commands to IoT devices over MQTT. "
            'Every error answers {"message": "..."}.',
        },
        "paths": {
            "/jobs": {
                "post": {
                    "operationId": "submitJob",
                    "summary": "Create a job: every batch entry x every destination is a task",
                    "parameters": submit_query_parameters(),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": job_request,
                                "examples": JOB_REQUEST_EXAMPLES,
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "the job; collection holds the task ids in order. "
                            "With ?dryRun=true the plan instead (nothing stored or sent)",
                            "headers": {
                                "Location": {
                                    "description": "/jobs/{id}",
                                    "schema": {"type": "string"},
                                }
                            },
                            "content": {
                                "application/json": {
                                    "schema": {"oneOf": [job_view, dry_run_plan]},
                                    "examples": {"dryRun": {"value": DRY_RUN_EXAMPLE}},
                                }
                            },
                        },
                        "400": error(
                            "malformed JSON or UTF-8, a field that does not validate (a "
                            "schedule whose endAt is past included), nesting "
                            "deeper than limits.max_json_depth, a batch entry's data larger "
                            "than limits.max_data_bytes, or an unknown query parameter"
                        ),
                        "413": error(
                            "body larger than http.max_body_bytes, or more tasks than "
                            "limits.max_tasks_per_job"
                        ),
                        "415": error(
                            "the body is not declared `Content-Type: application/json` (UTF-8)"
                        ),
                        "429": {
                            **error("limits.max_jobs_running jobs are running already"),
                            "headers": retry_after,
                        },
                        "503": {
                            **error(
                                "the job store cannot write (disk full, read-only database): "
                                "nothing was created; GET /readyz says when it can again"
                            ),
                            "headers": retry_after,
                        },
                    },
                },
                "get": {
                    "operationId": "listJobs",
                    "summary": "Jobs, newest first; collection holds task ids",
                    "parameters": query_parameters(query_components["ListJobsQuery"]),
                    "responses": {
                        "200": {
                            "description": "one page of jobs",
                            "headers": {
                                "X-Total-Count": {
                                    "description": "jobs matching the filter, all pages",
                                    "schema": {"type": "integer", "minimum": 0},
                                }
                            },
                            "content": json_content(job_list),
                        },
                        "400": error("an invalid or unknown query parameter"),
                    },
                },
            },
            "/jobs/{id}": {
                "parameters": [job_id],
                "get": {
                    "operationId": "getJob",
                    "summary": "One job",
                    "parameters": query_parameters(query_components["JobQuery"]),
                    "responses": {
                        "200": job_response,
                        "400": error("an invalid or unknown query parameter"),
                        "404": error("no such job"),
                    },
                },
                "delete": {
                    "operationId": "deleteJob",
                    "summary": "Cancel the job if it runs, forget it, return its final state",
                    "parameters": query_parameters(query_components["JobQuery"]),
                    "responses": {
                        "200": job_response,
                        "400": error("an invalid or unknown query parameter"),
                        "404": error("no such job"),
                        "409": error(
                            "the job runs on another gateway that shares the database without "
                            "cluster.enabled (ask that one); in a cluster any gateway deletes it"
                        ),
                        "415": error(
                            "a body that is not declared `Content-Type: application/json` "
                            "(none is needed)"
                        ),
                    },
                },
            },
            "/jobs/{id}/tasks": {
                "parameters": [job_id],
                "get": {
                    "operationId": "listJobTasks",
                    "summary": "A job's tasks in job order, paged and filtered",
                    "parameters": query_parameters(query_components["JobTasksQuery"]),
                    "responses": {
                        "200": {
                            "description": "one page of the job's tasks",
                            "headers": {
                                "X-Total-Count": {
                                    "description": "tasks matching the filters, all pages",
                                    "schema": {"type": "integer", "minimum": 0},
                                }
                            },
                            "content": json_content(task_list),
                        },
                        "400": error("an invalid or unknown query parameter"),
                        "404": error("no such job"),
                    },
                },
            },
            "/jobs/{id}/ws": {
                "parameters": [job_id],
                "get": {
                    "operationId": "watchJob",
                    "summary": "WebSocket: the job's changes as JSON text messages",
                    "description": (
                        'First {"type": "job"} (a snapshot without collection), then task '
                        'changes and coalesced {"type": "job"} snapshots; the last message is '
                        "the final job snapshot, after which the server closes with 1000. "
                        'Task changes by ?tasks=: each (default) one {"type": "task"} per '
                        'change, batch one {"type": "tasks"} per update with every change '
                        "since the last, none no task messages. A slow client may miss task "
                        "changes, never the final message. Watchers of a job with the same "
                        "tasks and interval get the same updates at the same time: a new one's "
                        "first update may come sooner than interval after its first snapshot, "
                        "and with each its task messages lag the job as the others' do. "
                        "Close code 1011 means the server "
                        "failed. With api.tokens, a browser (which cannot set headers on a "
                        "handshake) offers the subprotocols pm.watch and pm.bearer.<the token "
                        "in base64url, unpadded>; the server selects pm.watch."
                    ),
                    "parameters": query_parameters(query_components["WatchJobQuery"]),
                    "responses": {
                        "101": {
                            "description": "switching to WebSocket; each message is one of",
                            "content": json_content(watch_message),
                        },
                        "400": error(
                            "a plain HTTP request, not a WebSocket handshake; an unknown "
                            "tasks value or query parameter"
                        ),
                        "404": error("no such job (the handshake is refused)"),
                        "429": {
                            **error("limits.max_watchers_per_job watchers are watching it"),
                            "headers": retry_after,
                        },
                    },
                },
            },
            **control_paths,
            **device_paths,
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness: 200 while the process serves, even degraded; "
                    "broker connection state and actor counts",
                    "responses": {
                        "200": {"description": "health", "content": json_content(health)}
                    },
                },
            },
            "/readyz": {
                "get": {
                    "operationId": "readiness",
                    "summary": "Readiness: 503 while the broker is disconnected, the answer "
                    "path is lost or the job store cannot commit, 200 otherwise",
                    "responses": {
                        "200": {"description": "ready", "content": json_content(readiness)},
                        "503": {
                            "description": "not ready; reasons says why",
                            "content": json_content(readiness),
                        },
                    },
                },
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics: jobs, tasks, drops, broker, watchers",
                    "description": (
                        "In a cluster the fleet series (pm_tasks_dispatched_total, "
                        "pm_tasks_answered_total, pm_tasks_in_flight, ...) are this gateway's: "
                        "a sum over the gateways gives the cluster's."
                    ),
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format 0.0.4",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                },
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {"description": "OpenAPI 3.1", "content": json_content({})}
                    },
                },
            },
        },
        "components": {"schemas": components},
    }
    for item in document["paths"].values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            # Every endpoint refuses unknown query parameters and other sites' pages.
            operation["responses"].setdefault(
                "400", error("an unknown query parameter (this endpoint takes none)")
            )
            operation["responses"]["403"] = error(
                "a browser request (Origin header) from a site that is neither the gateway "
                "itself nor in http.allowed_origins"
            )
    if bearer_auth:
        _require_bearer_token(document, error("missing or invalid bearer token"))
    return document


def _require_bearer_token(document: dict[str, Any], unauthorized: dict[str, Any]) -> None:
    document["components"]["securitySchemes"] = {
        "bearerToken": {"type": "http", "scheme": "bearer", "description": "one of api.tokens"}
    }
    document["security"] = [{"bearerToken": []}]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if path in ("/healthz", "/readyz"):
                operation["security"] = []  # open: orchestrators' probes carry no token
            else:
                operation["responses"]["401"] = unauthorized
