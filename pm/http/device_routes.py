"""The device API's routes: ``GET /devices``, ``/devices/{id}``, ``/devices/{id}/tasks``.

Kept beside :mod:`pm.http.app`, which registers them; query strings are validated there like
every endpoint's (:mod:`pm.http.queries`).

Error handling: an id that is not a valid device id is a 400 saying so; an unknown device a
404; a store that cannot be read a 503 (the app's handler).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from quart import g
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from ..device_directory import DeviceDirectory
from ..protocol import InvalidDeviceId
from .queries import DeviceTasksQuery, ListDevicesQuery

Respond = Callable[..., TrioResponse]


def add_device_routes(
    app: QuartTrio, directory: DeviceDirectory, respond: Respond, refuse: Respond
) -> None:
    """Register the device routes on ``app``.

    Args:
      respond: ``json_response(body, headers=...)`` of the app.
      refuse: ``error_response(status, message)`` of the app.
    """

    @app.get("/devices")
    async def list_devices() -> TrioResponse:
        query = g.query
        assert isinstance(query, ListDevicesQuery)
        views, total = await directory.list(
            presence=None if query.presence is msgspec.UNSET else query.presence,
            prefix=query.q,
            limit=query.limit,
            offset=query.offset,
        )
        return respond(views, headers={"X-Total-Count": str(total)})

    @app.get("/devices/<device_id>")
    async def get_device(device_id: str) -> TrioResponse:
        try:
            view = await directory.get(device_id)
        except InvalidDeviceId as error:
            return refuse(400, str(error))
        if view is None:
            return refuse(404, f"no device {device_id}: no presence source and no task knows it")
        return respond(view)

    @app.get("/devices/<device_id>/tasks")
    async def device_tasks(device_id: str) -> TrioResponse:
        query = g.query
        assert isinstance(query, DeviceTasksQuery)
        try:
            found = await directory.tasks(
                device_id,
                status=None if query.status is msgspec.UNSET else query.status,
                limit=query.limit,
                offset=query.offset,
            )
        except InvalidDeviceId as error:
            return refuse(400, str(error))
        if found is None:
            return refuse(404, f"no device {device_id}: no presence source and no task knows it")
        views, total = found
        return respond(views, headers={"X-Total-Count": str(total)})
