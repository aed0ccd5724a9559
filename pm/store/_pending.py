"""The changes recorded since the last commit, and how a failed commit gives them back."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from ..presence import DevicePresence
from ..schemas import BatchEntry
from ..state import JobRecord, TaskRecord
from ._rows import Row, device_row, job_row, job_update, task_rows, task_updates
from ._statements import WriteStatements

_json_encode = msgspec.json.encode

# New tasks to (fresh insert rows, whole insert rows): pm.store._rows.task_rows by default.
TaskRows = Callable[[Iterable[TaskRecord]], tuple[list[Row], list[Row]]]


class PendingChanges:
    """Rows to write at the next commit. Records are held by reference: a commit writes
    each one as it is when the commit starts, however often it changed before."""

    def __init__(self) -> None:
        self.created: dict[int, tuple[JobRecord, Sequence[BatchEntry]]] = {}
        self.jobs: dict[int, JobRecord] = {}
        self.tasks: dict[int, TaskRecord] = {}
        self.deleted: set[int] = set()
        # The newest presence of each device that changed (one row per device per window).
        self.devices: dict[str, DevicePresence] = {}

    def job_created(self, record: JobRecord, batch: Sequence[BatchEntry]) -> None:
        self.created[record.id] = (record, batch)

    def job_changed(self, record: JobRecord) -> bool:
        """Returns whether there is something new to write (a created job is written whole)."""
        if record.id in self.created:
            return False
        self.jobs[record.id] = record
        return True

    def task_changed(self, task: TaskRecord) -> bool:
        if task.job_id in self.created:
            return False
        self.tasks[task.id] = task
        return True

    def presence_changed(self, record: DevicePresence) -> None:
        self.devices[record.id] = record

    def job_deleted(self, job_id: int) -> None:
        # Created and deleted before any commit: the database never hears of it.
        if self.created.pop(job_id, None) is None:
            self.deleted.add(job_id)
        self.jobs.pop(job_id, None)

    def give_back(self, failed: PendingChanges) -> None:
        """Take back the changes of a commit that failed, under the ones recorded since.

        Nothing is lost and nothing goes backwards: records are shared, so a row written
        later carries its newest state; a job deleted meanwhile stays deleted.
        """
        for job_id, created in failed.created.items():
            if job_id in self.deleted:
                # Deleted while its first commit was failing: it never reaches the database.
                self.deleted.discard(job_id)
                self.jobs.pop(job_id, None)
                continue
            self.created[job_id] = created
        for job_id, record in failed.jobs.items():
            if job_id not in self.deleted and job_id not in self.created:
                self.jobs.setdefault(job_id, record)
        for task_id, task in failed.tasks.items():
            if task.job_id not in self.created:
                self.tasks.setdefault(task_id, task)
        self.deleted |= failed.deleted
        for device, record in failed.devices.items():
            self.devices.setdefault(device, record)  # a newer change wins

    def statements(
        self, sql: WriteStatements, new_task_rows: TaskRows = task_rows
    ) -> tuple[list[tuple[str, str]], int]:
        """The statements of ``sql`` (one engine's) that write these changes, each with its
        JSON array of rows, and how many rows that is. ``new_task_rows`` builds the insert
        rows of new tasks (a clustered gateway's add their shard)."""
        created_tasks = (task for record, _ in self.created.values() for task in record.tasks)
        fresh_task_rows, whole_task_rows = new_task_rows(created_tasks)
        plain_task_updates, whole_task_updates = task_updates(self.tasks.values())
        deletions = [[job_id] for job_id in self.deleted]
        writes: list[tuple[str, list[Any]]] = [
            (sql.insert_jobs, [job_row(record) for record, _ in self.created.values()]),
            (
                sql.insert_entries,
                [
                    (record.id, position, entry.method, entry.resource, _encode_text(entry.data))
                    for record, batch in self.created.values()
                    for position, entry in enumerate(batch)
                ],
            ),
            (sql.insert_fresh_tasks, fresh_task_rows),
            (sql.insert_tasks, whole_task_rows),
            (sql.update_jobs, [job_update(record) for record in self.jobs.values()]),
            (sql.update_plain_tasks, plain_task_updates),
            (sql.update_tasks, whole_task_updates),
            *((delete, deletions) for delete in sql.delete_jobs),
            (sql.upsert_devices, [device_row(record) for record in self.devices.values()]),
        ]
        # Only statements with something to write, each taking all its rows as one JSON
        # array: the sqlite3 module releases and retakes the GIL per statement step, and
        # against a busy trio thread each hand-off can wait out the 5 ms switch interval.
        # Measured: 200 entries through executemany took 0.9-1.7 s under load, stretching
        # the window a crash can lose; one JSON statement takes milliseconds. PostgreSQL
        # gains the same way: one round trip per statement, not per row.
        statements = [(statement, _encode_text(rows)) for statement, rows in writes if rows]
        # The deletes count once (one row each, however many tables they touch).
        rows = sum(len(rows) for _, rows in writes) - len(deletions) * (len(sql.delete_jobs) - 1)
        return statements, rows


def _encode_text(value: Any) -> str:
    return _json_encode(value).decode()
