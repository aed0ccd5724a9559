"""The device part of the OpenAPI document: ``/fleet``, ``/devices``, ``/devices/{id}``,
``/devices/{id}/tasks`` with the schemas of their bodies.

Bodies come from :mod:`pm.device_views`, query parameters from :mod:`pm.http.queries`; only
the prose is written here. :func:`pm.http.openapi.build_openapi` merges the paths and schemas
into the whole document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ..device_views import DeviceTaskView, DeviceView
from ..fleet_overview import FleetView
from .openapi_fragments import REF_TEMPLATE, json_content, query_parameters, total_count
from .queries import DeviceTasksQuery, ListDevicesQuery


def build_device_paths(
    error: Callable[[str], dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The device paths and the component schemas they refer to.

    Args:
      error: builds an error response object from its description.

    Returns:
      ``(paths, components)``: path items by path, and schemas by name.
    """
    (device_view, device_list, device_tasks, fleet_view), components = (
        msgspec.json.schema_components(
            [DeviceView, list[DeviceView], list[DeviceTaskView], FleetView],
            ref_template=REF_TEMPLATE,
        )
    )
    # The query Structs are inlined as parameters, not published as components.
    (_, _), query_components = msgspec.json.schema_components(
        [ListDevicesQuery, DeviceTasksQuery], ref_template=REF_TEMPLATE
    )
    device_id = {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "device id; MAC spellings are normalized (00-0C-29-1C-E8-01 is "
        "00:0c:29:1c:e8:01)",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"},
    }
    paths = {
        "/fleet": {
            "get": {
                "operationId": "fleetOverview",
                "summary": "The fleet at a glance: devices online and offline, tasks in flight, "
                "dispatch and answer rates over the last five minutes, the gateway's health",
                "description": (
                    "What the dashboard's fleet page shows. throughput holds one sample per "
                    "sampleInterval seconds (5), oldest first, at most 60; each is the rate of "
                    "requests published and final answers received over that interval. In a "
                    "cluster, tasksInFlight, tasksDispatched, tasksAnswered and throughput are "
                    "this gateway's (the shards it serves and served: add them up over the "
                    "gateways for the cluster's); devicesOnline, devicesOffline and jobsRunning "
                    "are the cluster's."
                ),
                "responses": {
                    "200": {"description": "the overview", "content": json_content(fleet_view)}
                },
            },
        },
        "/devices": {
            "get": {
                "operationId": "listDevices",
                "summary": "Devices by id: presence, work waiting and in flight, task counts",
                "description": (
                    "Every device a presence source spoke of (the status topic, which the "
                    "embedded broker also feeds) or a stored task is for."
                ),
                "parameters": query_parameters(query_components["ListDevicesQuery"]),
                "responses": {
                    "200": {
                        "description": "one page of devices",
                        "headers": {"X-Total-Count": total_count("devices")},
                        "content": json_content(device_list),
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
                    "200": {"description": "the device", "content": json_content(device_view)},
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
                "parameters": query_parameters(query_components["DeviceTasksQuery"]),
                "responses": {
                    "200": {
                        "description": "one page of tasks",
                        "headers": {"X-Total-Count": total_count("tasks")},
                        "content": json_content(device_tasks),
                    },
                    "400": error("not a valid device id, or an invalid query parameter"),
                    "404": error("no presence source and no task knows this device"),
                },
            },
        },
    }
    return paths, components
