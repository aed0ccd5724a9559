"""The job store: SQLite (stdlib ``sqlite3``, WAL) behind a group-committing actor.

Writers never wait for the disk. Job and device actors record what changed with synchronous,
O(1) calls (:meth:`Store.job_created`, :meth:`Store.task_changed`, ...) that only mark rows
dirty; the store actor (:meth:`Store.run`) wakes at most every ``commit_interval`` seconds,
snapshots the dirty rows on the trio thread (so a row is never read half-updated) and writes
them in one transaction off the trio thread. A task that changed three times in a window is
written once.

What a crash can lose: at most the changes of the last ``commit_interval`` (plus the commit
under way). Each commit is one transaction holding every change of its window, job rows and
task rows together, so what survives is a state the gateway really was in; recovery still
recomputes job counts from task rows.

Ids are never reused: the store persists a high-water mark per id kind, reserved in blocks
ahead of use (:meth:`Store.allocate_job_ids`); after a restart allocation resumes above it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import msgspec
import trio

from ..schemas import FINAL_JOB_STATUSES, BatchEntry, JobView
from ..state import JobRecord, TaskRecord
from ._rows import (
    DELETE_JOBS,
    INSERT_ENTRIES,
    INSERT_JOBS,
    INSERT_TASKS,
    JOB_COLUMNS,
    UPDATE_JOBS,
    UPDATE_TASKS,
    UPSERT_COUNTERS,
    job_row,
    job_update,
    job_view,
    load_records,
    task_row,
    task_update,
)
from ._schema import migrate

logger = logging.getLogger(__name__)

Result = TypeVar("Result")

_json_encode = msgspec.json.encode

# Ids reserved per persisted step. A restart skips what was reserved but unused: gaps, never reuse.
JOB_ID_BLOCK = 10_000
TASK_ID_BLOCK = 1_000_000


class Store:
    """Persistent jobs and tasks. Open with :func:`open_store`.

    Args:
      connection: an open connection (autocommit mode; the store runs its own transactions).
      commit_interval: the group-commit window in seconds.
    """

    def __init__(
        self, connection: sqlite3.Connection, commit_interval: float, *, in_memory: bool = False
    ) -> None:
        self._connection = connection
        # An in-memory database does no disk I/O: running it on the trio thread costs less
        # than a thread hop, and keeps tests on trio's virtual clock deterministic (time
        # jumps while a worker thread runs).
        self._inline = in_memory
        self._commit_interval = commit_interval
        # One connection, used from one worker thread at a time.
        self._limiter = trio.CapacityLimiter(1)
        self._created: dict[int, tuple[JobRecord, Sequence[BatchEntry]]] = {}
        self._dirty_jobs: dict[int, JobRecord] = {}
        self._dirty_tasks: dict[int, TaskRecord] = {}
        self._deleted: set[int] = set()
        self._counters: dict[str, int] = {}
        self._dirty = trio.Event()
        self._flush_now = trio.Event()
        self._commits_started = 0
        self._commits_done = 0
        self._committed = trio.Event()
        self.commits = 0
        self.rows_written = 0
        self._next_ids = {"job": 1, "task": 1}
        self._reserving = trio.Lock()
        self._reserved = {"job": 0, "task": 0}

    # -- ids ---------------------------------------------------------------------------------

    def _load_counters(self) -> None:
        rows = dict(self._connection.execute("SELECT name, value FROM counters").fetchall())
        for kind in ("job", "task"):
            # Resume above everything ever reserved: ids handed out before a crash stay unique.
            high_water = int(rows.get(kind, 0))
            self._next_ids[kind] = high_water + 1
            self._reserved[kind] = high_water

    def _reservation_needed(self, kind: str, count: int, block: int) -> int | None:
        last = self._next_ids[kind] + count - 1
        if last <= self._reserved[kind]:
            return None
        return last + block

    async def allocate_ids(self, jobs: int, tasks: int) -> tuple[int, int]:
        """Reserve ``jobs`` job ids and ``tasks`` task ids; returns the first of each.

        Usually immediate; when a reserved block runs out it waits for one commit. The
        final check and the allocation happen with no checkpoint in between, so concurrent
        callers can never be handed ids beyond what is persisted.
        """
        while True:
            wanted = self._reservations_needed(jobs, tasks)
            if not wanted:
                first_job, first_task = self._next_ids["job"], self._next_ids["task"]
                self._next_ids["job"] += jobs
                self._next_ids["task"] += tasks
                return first_job, first_task
            async with self._reserving:
                wanted = self._reservations_needed(jobs, tasks)
                if wanted:
                    self._counters.update(wanted)
                    self._mark_dirty()
                    await self.sync()
                    for kind, high_water in wanted.items():
                        self._reserved[kind] = max(self._reserved[kind], high_water)

    def _reservations_needed(self, jobs: int, tasks: int) -> dict[str, int]:
        wanted = {}
        for kind, count, block in (("job", jobs, JOB_ID_BLOCK), ("task", tasks, TASK_ID_BLOCK)):
            high_water = self._reservation_needed(kind, count, block)
            if high_water is not None:
                wanted[kind] = high_water
        return wanted

    # -- recording changes (synchronous, never waits) ----------------------------------------

    def job_created(self, record: JobRecord, batch: Sequence[BatchEntry]) -> None:
        self._created[record.id] = (record, batch)
        self._mark_dirty()

    def job_changed(self, record: JobRecord) -> None:
        if record.id not in self._created:
            self._dirty_jobs[record.id] = record
            self._mark_dirty()

    def task_changed(self, task: TaskRecord) -> None:
        if task.job_id not in self._created:
            self._dirty_tasks[task.id] = task
            self._mark_dirty()

    def job_deleted(self, job_id: int) -> None:
        if self._created.pop(job_id, None) is None:
            self._deleted.add(job_id)
        self._dirty_jobs.pop(job_id, None)
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        self._dirty.set()

    @property
    def pending_changes(self) -> bool:
        return self._dirty.is_set()

    # -- the store actor ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit dirty rows in groups until cancelled; a final commit runs shielded."""
        task_status.started()
        try:
            while True:
                await self._dirty.wait()
                with trio.move_on_after(self._commit_interval):
                    await self._flush_now.wait()
                await self._commit()
        finally:
            with trio.CancelScope(shield=True):
                if self._dirty.is_set():
                    await self._commit()

    async def sync(self) -> None:
        """Return once every change recorded before this call is committed."""
        if not self._dirty.is_set() and self._commits_started == self._commits_done:
            return
        target = self._commits_started + (1 if self._dirty.is_set() else 0)
        self._flush_now.set()
        while self._commits_done < target:
            await self._committed.wait()

    async def _commit(self) -> None:
        self._commits_started += 1
        self._dirty = trio.Event()
        self._flush_now = trio.Event()
        created, self._created = self._created, {}
        dirty_jobs, self._dirty_jobs = self._dirty_jobs, {}
        dirty_tasks, self._dirty_tasks = self._dirty_tasks, {}
        deleted, self._deleted = self._deleted, set()
        counters, self._counters = self._counters, {}
        # Rows are built here, on the trio thread, so no row mixes two states of a record.
        job_rows = [job_row(record) for record, _ in created.values()]
        entry_rows = [
            (record.id, position, entry.method, entry.resource, _json_encode(entry.data).decode())
            for record, batch in created.values()
            for position, entry in enumerate(batch)
        ]
        task_rows = [task_row(task) for record, _ in created.values() for task in record.tasks]
        job_updates = [job_update(record) for record in dirty_jobs.values()]
        task_updates = [task_update(task) for task in dirty_tasks.values()]
        counter_rows = list(counters.items())
        deletions = [[job_id] for job_id in deleted]

        # Only statements with something to write, each taking all its rows as one JSON
        # array: the sqlite3 module releases and retakes the GIL per statement step, and
        # against a busy trio thread each hand-off can wait out the 5 ms switch interval.
        # Measured: 200 entries through executemany took 0.9-1.7 s under load, stretching
        # the window a crash can lose; one JSON statement takes milliseconds.
        statements = [
            (sql, _json_encode(rows).decode())
            for sql, rows in (
                (UPSERT_COUNTERS, counter_rows),
                (INSERT_JOBS, job_rows),
                (INSERT_ENTRIES, entry_rows),
                (INSERT_TASKS, task_rows),
                (UPDATE_JOBS, job_updates),
                (UPDATE_TASKS, task_updates),
                *((sql, deletions) for sql in DELETE_JOBS),
            )
            if rows
        ]
        rows = (
            len(job_rows)
            + len(entry_rows)
            + len(task_rows)
            + len(job_updates)
            + len(task_updates)
            + len(counter_rows)
            + len(deletions)
        )

        def write(connection: sqlite3.Connection) -> int:
            connection.execute("BEGIN")
            try:
                for sql, rows_json in statements:
                    connection.execute(sql, (rows_json,))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            return rows

        try:
            with trio.CancelScope(shield=True):
                # Shielded: a commit that started finishes, so a clean stop loses nothing.
                self.rows_written += await self._in_thread(write)
            self.commits += 1
        finally:
            self._commits_done += 1
            committed, self._committed = self._committed, trio.Event()
            committed.set()

    # -- reads -------------------------------------------------------------------------------

    async def _in_thread(self, work: Callable[[sqlite3.Connection], Result]) -> Result:
        if self._inline:
            await trio.lowlevel.checkpoint()
            return work(self._connection)
        return await trio.to_thread.run_sync(work, self._connection, limiter=self._limiter)

    async def list_jobs(
        self, *, status: str | None, limit: int, offset: int
    ) -> tuple[list[JobView], int]:
        """Jobs newest first (``collection`` = task ids), and the total matching.

        Reads what is committed: call :meth:`sync` first for up-to-date results.
        """

        def read(connection: sqlite3.Connection) -> tuple[list[JobView], int]:
            where, parameters = ("WHERE status = ?", (status,)) if status else ("", ())
            total = connection.execute(f"SELECT count(*) FROM jobs {where}", parameters)
            rows = connection.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                (*parameters, limit, offset),
            ).fetchall()
            views = []
            for row in rows:
                task_ids = [
                    task_id
                    for (task_id,) in connection.execute(
                        "SELECT id FROM tasks WHERE job_id = ? ORDER BY id", (row[0],)
                    )
                ]
                views.append(job_view(row, task_ids))
            return views, int(total.fetchone()[0])

        return await self._in_thread(read)

    async def load_job(self, job_id: int, tunnel_for: Callable[[str], str]) -> JobRecord | None:
        def read(connection: sqlite3.Connection) -> JobRecord | None:
            records = load_records(connection, "WHERE id = ?", (job_id,), tunnel_for)
            return records[0] if records else None

        return await self._in_thread(read)

    def load_unfinished(self, tunnel_for: Callable[[str], str]) -> list[JobRecord]:
        """Jobs not final, oldest first, with all their tasks (called once, at start)."""
        placeholders = ",".join("?" * len(FINAL_JOB_STATUSES))
        return load_records(
            self._connection,
            f"WHERE status NOT IN ({placeholders})",
            tuple(sorted(FINAL_JOB_STATUSES)),
            tunnel_for,
        )

    async def delete_finished_before(self, epoch_seconds: float) -> int:
        """Retention: delete finished jobs that ended before ``epoch_seconds``."""

        def delete(connection: sqlite3.Connection) -> int:
            connection.execute("BEGIN")
            try:
                doomed = [
                    row[0]
                    for row in connection.execute(
                        "SELECT id FROM jobs WHERE finish_at IS NOT NULL AND finish_at < ?",
                        (epoch_seconds,),
                    )
                ]
                doomed_json = _json_encode([[job_id] for job_id in doomed]).decode()
                for statement in DELETE_JOBS:
                    connection.execute(statement, (doomed_json,))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            return len(doomed)

        return await self._in_thread(delete)

    def close(self) -> None:
        self._connection.close()


async def open_store(path: str | Path, *, commit_interval: float) -> Store:
    """Open (creating and migrating as needed) the database at ``path`` (``":memory:"`` ok).

    Error handling: ``sqlite3.Error`` and :class:`~pm.store.SchemaTooNew` propagate; the
    gateway refuses to start on a database it cannot use.
    """

    def connect() -> Store:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: the store issues BEGIN/COMMIT itself (group commit).
        connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk when it returns. Group commit keeps that to a few per second.
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        try:
            migrate(connection)
            store = Store(connection, commit_interval, in_memory=str(path) == ":memory:")
            store._load_counters()
        except BaseException:
            connection.close()
            raise
        return store

    return await trio.to_thread.run_sync(connect)
