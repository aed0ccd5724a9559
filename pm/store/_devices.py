"""The store's device queries: presence rows and a device's tasks across jobs.

Plain functions of a connection; :class:`pm.store.Store` runs them off the trio thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from ..presence import DevicePresence
from ..state import TaskRecord
from ._connection import Connection
from ._rows import (
    DEVICE_COLUMNS,
    DEVICE_TASK_COLUMNS,
    DEVICE_TASK_JOINS,
    device_presence,
    task_record,
)

_json_decode = msgspec.json.decode


class DeviceTaskQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Which of a device's tasks to read: one page, newest first, of one status or all."""

    status: str | None
    limit: int
    offset: int
    tunnel_for: Callable[[str], str]


def load_presences(connection: Connection) -> list[DevicePresence]:
    return [
        device_presence(row) for row in connection.execute(f"SELECT {DEVICE_COLUMNS} FROM devices")
    ]


def devices_with_tasks(connection: Connection) -> set[str]:
    # tasks_by_device makes this an index scan, not a table scan.
    return {device for (device,) in connection.execute("SELECT DISTINCT device FROM tasks")}


def task_counts(connection: Connection, *, devices: Sequence[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for device in devices:
        for status, count in connection.execute(
            "SELECT status, count(*) FROM tasks WHERE device = ? GROUP BY status", (device,)
        ):
            counts.setdefault(device, {})[status] = int(count)
    return counts


def sent_tasks(connection: Connection, *, devices: Sequence[str]) -> dict[str, int]:
    # One statement for a page of devices; tasks_by_device (device, id) finds each device's
    # rows. A device works on one task at a time; should two rows say ``sent`` (a task moved
    # between shards mid-commit), the newest is the one it works on.
    if not devices:
        return {}
    marks = ", ".join("?" * len(devices))
    return {
        device: int(task_id)
        for device, task_id in connection.execute(
            f"SELECT device, max(id) FROM tasks WHERE device IN ({marks}) AND status = 'sent'"
            " GROUP BY device",
            tuple(devices),
        )
    }


def device_tasks(
    connection: Connection, *, device: str, query: DeviceTaskQuery
) -> tuple[list[TaskRecord], int]:
    where = "WHERE t.device = ?" + (" AND t.status = ?" if query.status else "")
    parameters: tuple[str, ...] = (device, query.status) if query.status else (device,)
    total = connection.execute(f"SELECT count(*) FROM tasks t {where}", parameters).fetchone()
    tasks = [
        task_record(
            row[:16], row[16], row[17], (row[18], row[19], _json_decode(row[20])), query.tunnel_for
        )
        for row in connection.execute(
            f"SELECT {DEVICE_TASK_COLUMNS} {DEVICE_TASK_JOINS} {where}"
            " ORDER BY t.id DESC LIMIT ? OFFSET ?",
            (*parameters, query.limit, query.offset),
        )
    ]
    return tasks, int(total[0])
