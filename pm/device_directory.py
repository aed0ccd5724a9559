"""What the device API answers: each device's presence (:class:`pm.presence.PresenceBook`),
its stored tasks (:class:`pm.store.Store`) and its task in flight (:class:`pm.devices.Fleet`).

Which fleet: on one gateway the engine's. In a cluster (``cluster.enabled``) the engine's fleet
dispatches nothing: a device's task in flight and its answer latencies are those of the shard
fleet serving it if this gateway serves its shard (exact, now); else its task in flight is the
one the store has as ``sent`` (committed by the gateway serving it, so as of that gateway's
last commit window, ``store.commit_interval``) and its latency is unknown (null: latencies
are kept in the serving gateway's memory only).

Read-only: nothing here changes a device, a task or the fleet. Known devices are those some
presence source spoke of and those some stored task is for; any other id is unknown (404).

Error handling: store faults propagate as :class:`pm.store.StoreUnavailable` (503); a
device id that is not a valid id raises :class:`pm.protocol.InvalidDeviceId` (400).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .answer_latency import AnswerLatencies
from .device_views import DeviceTaskView, DeviceView
from .presence import Presence, PresenceBook
from .protocol import normalize_device_id
from .state import iso_timestamp
from .store import DeviceTaskQuery, Store

if TYPE_CHECKING:
    from .engine import Engine


class InFlightTasks(Protocol):
    latencies: AnswerLatencies

    def task_in_flight(self, device: str) -> int | None: ...


FleetOf = Callable[[str], InFlightTasks | None]


def fleet_serving(engine: Engine) -> FleetOf:
    """Which fleet holds a device's task in flight on ``engine``'s gateway: the engine's on one
    gateway; in a cluster that of the shard serving the device, ``None`` if another gateway
    serves it (module docstring)."""
    # Imported here: pm.cluster_engine imports the engine, whose modules import this one's.
    from .cluster_engine import ClusterEngine

    if not isinstance(engine, ClusterEngine):
        fleet = engine.fleet
        return lambda device: fleet

    def shard_fleet(device: str) -> InFlightTasks | None:
        dispatcher = engine.dispatcher
        return None if dispatcher is None else dispatcher.fleet_serving(device)

    return shard_fleet


def _iso(moment: float | None) -> str | None:
    return None if moment is None else iso_timestamp(moment)


class DeviceDirectory:
    """Device views for the API.

    Args:
      presence: the engine's presence book.
      store: the engine's store (read after :meth:`Store.sync_for_reading`, so a view
        includes every task change made before the request).
      fleet_of: the fleet that has what a device has in flight now and its recent answer
        latencies, ``None`` for a device another clustered gateway serves (its task in
        flight is then read from the store).
      tunnel_for: a device's answer topic (a stored task's ``tunnel``).
    """

    def __init__(
        self,
        presence: PresenceBook,
        store: Store,
        fleet_of: FleetOf,
        tunnel_for: Callable[[str], str],
    ) -> None:
        self._presence = presence
        self._store = store
        self._fleet_of = fleet_of
        self._tunnel_for = tunnel_for

    async def list(
        self, *, presence: str | None, prefix: str, limit: int, offset: int
    ) -> tuple[list[DeviceView], int]:
        """Devices ordered by id, of one presence and with an id prefix if given; a page and
        the total matching."""
        await self._store.sync_for_reading()
        known = {record.id for record in self._presence.records()}
        known |= await self._store.devices_with_tasks()
        matching = sorted(
            device
            for device in known
            if device.startswith(prefix)
            and (presence is None or self._presence.presence(device) == presence)
        )
        page = matching[offset : offset + limit]
        return await self._views(page), len(matching)

    async def get(self, device: str) -> DeviceView | None:
        """One device, ``None`` if unknown."""
        device = normalize_device_id(device)
        await self._store.sync_for_reading()
        views = await self._views([device])
        view = views[0]
        if view.presence == Presence.UNKNOWN and not view.counts:
            return None
        return view

    async def tasks(
        self, device: str, *, status: str | None, limit: int, offset: int
    ) -> tuple[list[DeviceTaskView], int] | None:
        """The device's tasks across jobs, newest first; ``None`` if the device is unknown."""
        if await self.get(device) is None:
            return None
        query = DeviceTaskQuery(
            status=status, limit=limit, offset=offset, tunnel_for=self._tunnel_for
        )
        tasks, total = await self._store.device_tasks(normalize_device_id(device), query)
        views = [
            DeviceTaskView(
                id=view.id,
                method=view.method,
                resource=view.resource,
                tunnel=view.tunnel,
                data=view.data,
                destination=view.destination,
                task=view.task,
                job_id=task.job_id,
            )
            for task in tasks
            for view in (task.view(),)
        ]
        return views, total

    async def _views(self, devices: list[str]) -> list[DeviceView]:
        counts = await self._store.task_counts(devices)
        fleets = {device: self._fleet_of(device) for device in devices}
        elsewhere = [device for device, fleet in fleets.items() if fleet is None]
        stored_in_flight = await self._store.sent_tasks(elsewhere) if elsewhere else {}
        views = []
        for device in devices:
            record = self._presence.record(device)
            fleet = fleets[device]
            views.append(
                DeviceView(
                    id=device,
                    presence=self._presence.presence(device).value,
                    last_seen=None if record is None else _iso(record.last_seen),
                    connected_at=None if record is None else _iso(record.connected_at),
                    disconnected_at=None if record is None else _iso(record.disconnected_at),
                    pending=counts.get(device, {}).get("pending", 0),
                    in_flight=(
                        stored_in_flight.get(device)
                        if fleet is None
                        else fleet.task_in_flight(device)
                    ),
                    latency_p50=None if fleet is None else fleet.latencies.p50(device),
                    counts=counts.get(device, {}),
                )
            )
        return views
