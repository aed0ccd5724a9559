"""The OpenAPI 3.1 document of the HTTP API, generated from the msgspec Structs.

Bodies come from :mod:`pm.schemas`, query parameters from :mod:`pm.http.queries`; only the
prose (summaries, descriptions) is written here. OpenAPI 3.1 uses JSON Schema 2020-12, which
is what msgspec emits, so its schemas go in unchanged.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import msgspec

from ..device_views import DeviceTaskView, DeviceView
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
from .queries import (
    DeviceTasksQuery,
    JobQuery,
    JobTasksQuery,
    ListDevicesQuery,
    ListJobsQuery,
    WatchJobQuery,
)

_REF_TEMPLATE = "#/components/schemas/{name}"
_JSON = "application/json"


def _package_version() -> str:
    try:
        return metadata.version("sanji-puppetmaster")
    except metadata.PackageNotFoundError:
        return "0.0.0"  # running from a tree that was never installed


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {_JSON: {"schema": schema}}


def _query_parameters(query_schema: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``in: query`` parameter per property of a query Struct's schema."""
    required = set(query_schema.get("required", ()))
    parameters = []
    for name, schema in query_schema["properties"].items():
        schema = dict(schema)
        # An optional parameter is simply left out; "null" is not something a query can say.
        if "anyOf" in schema:
            kept = [option for option in schema["anyOf"] if option != {"type": "null"}]
            if len(kept) == 1:
                del schema["anyOf"]
                schema.update(kept[0])
            else:
                schema["anyOf"] = kept
            if schema.get("default", ...) is None:
                del schema["default"]
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        description = schema.pop("description", None)
        if description is not None:
            parameter["description"] = description
        parameter["schema"] = schema
        parameters.append(parameter)
    return parameters


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
        ref_template=_REF_TEMPLATE,
    )
    (device_view, device_list, device_tasks), device_components = msgspec.json.schema_components(
        [DeviceView, list[DeviceView], list[DeviceTaskView]], ref_template=_REF_TEMPLATE
    )
    components.update(device_components)
    # The query Structs are inlined as parameters, not published as components.
    (_, _, _, _, _, _), query_components = msgspec.json.schema_components(
        [ListJobsQuery, JobQuery, JobTasksQuery, WatchJobQuery, ListDevicesQuery, DeviceTasksQuery],
        ref_template=_REF_TEMPLATE,
    )

    def error(description: str) -> dict[str, Any]:
        return {"description": description, "content": _content(error_body)}

    job_id = {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "job id",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SQLITE_INTEGER},
    }
    job_response = {"description": "the job", "content": _content(job_view)}
    device_id = {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "device id; MAC spellings are normalized (00-0C-29-1C-E8-01 is "
        "00:0c:29:1c:e8:01)",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"},
    }

    def total_count(what: str) -> dict[str, Any]:
        return {
            "description": f"{what} matching the filters, all pages",
            "schema": {"type": "integer", "minimum": 0},
        }

    retry_after = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
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
                    "requestBody": {"required": True, "content": _content(job_request)},
                    "responses": {
                        "200": {
                            "description": "the job; collection holds the task ids in order",
                            "headers": {
                                "Location": {
                                    "description": "/jobs/{id}",
                                    "schema": {"type": "string"},
                                }
                            },
                            "content": _content(job_view),
                        },
                        "400": error(
                            "malformed JSON or UTF-8, a field that does not validate, nesting "
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
                    "parameters": _query_parameters(query_components["ListJobsQuery"]),
                    "responses": {
                        "200": {
                            "description": "one page of jobs",
                            "headers": {
                                "X-Total-Count": {
                                    "description": "jobs matching the filter, all pages",
                                    "schema": {"type": "integer", "minimum": 0},
                                }
                            },
                            "content": _content(job_list),
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
                    "parameters": _query_parameters(query_components["JobQuery"]),
                    "responses": {
                        "200": job_response,
                        "400": error("an invalid or unknown query parameter"),
                        "404": error("no such job"),
                    },
                },
                "delete": {
                    "operationId": "deleteJob",
                    "summary": "Cancel the job if it runs, forget it, return its final state",
                    "parameters": _query_parameters(query_components["JobQuery"]),
                    "responses": {
                        "200": job_response,
                        "400": error("an invalid or unknown query parameter"),
                        "404": error("no such job"),
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
                    "parameters": _query_parameters(query_components["JobTasksQuery"]),
                    "responses": {
                        "200": {
                            "description": "one page of the job's tasks",
                            "headers": {
                                "X-Total-Count": {
                                    "description": "tasks matching the filters, all pages",
                                    "schema": {"type": "integer", "minimum": 0},
                                }
                            },
                            "content": _content(task_list),
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
                        "changes, never the final message. Close code 1011 means the server "
                        "failed."
                    ),
                    "parameters": _query_parameters(query_components["WatchJobQuery"]),
                    "responses": {
                        "101": {
                            "description": "switching to WebSocket; each message is one of",
                            "content": _content(watch_message),
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
            "/devices": {
                "get": {
                    "operationId": "listDevices",
                    "summary": "Devices by id: presence, work waiting and in flight, task counts",
                    "description": (
                        "Every device a presence source spoke of (the status topic, which the "
                        "embedded amqtt broker also feeds) or a stored task is for."
                    ),
                    "parameters": _query_parameters(query_components["ListDevicesQuery"]),
                    "responses": {
                        "200": {
                            "description": "one page of devices",
                            "headers": {"X-Total-Count": total_count("devices")},
                            "content": _content(device_list),
                        },
                        "400": error("an invalid or unknown query parameter"),
                    },
                },
            },
            "/devices/{id}": {
                "parameters": [device_id],
                "get": {
                    "operationId": "getDevice",
                    "summary": "One device",
                    "responses": {
                        "200": {"description": "the device", "content": _content(device_view)},
                        "400": error("not a valid device id, or any query parameter"),
                        "404": error("no presence source and no task knows this device"),
                    },
                },
            },
            "/devices/{id}/tasks": {
                "parameters": [device_id],
                "get": {
                    "operationId": "listDeviceTasks",
                    "summary": "A device's tasks across jobs, newest first",
                    "parameters": _query_parameters(query_components["DeviceTasksQuery"]),
                    "responses": {
                        "200": {
                            "description": "one page of tasks",
                            "headers": {"X-Total-Count": total_count("tasks")},
                            "content": _content(device_tasks),
                        },
                        "400": error("not a valid device id, or an invalid query parameter"),
                        "404": error("no presence source and no task knows this device"),
                    },
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness: 200 while the process serves, even degraded; "
                    "broker connection state and actor counts",
                    "responses": {"200": {"description": "health", "content": _content(health)}},
                },
            },
            "/readyz": {
                "get": {
                    "operationId": "readiness",
                    "summary": "Readiness: 503 while the broker is disconnected, the answer "
                    "path is lost or the job store cannot commit, 200 otherwise",
                    "responses": {
                        "200": {"description": "ready", "content": _content(readiness)},
                        "503": {
                            "description": "not ready; reasons says why",
                            "content": _content(readiness),
                        },
                    },
                },
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics: jobs, tasks, drops, broker, watchers",
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
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": _content({})}},
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
