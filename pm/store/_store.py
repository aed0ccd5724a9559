"""The job store: a database (SQLite, or PostgreSQL at ``store.url``) behind a
group-committing actor.

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

Ids are never reused, across restarts and across gateways sharing one database: blocks are
reserved ahead of use by an atomic statement on a counter row (:meth:`Store.allocate_ids`,
``_ids.py``).

This class is the same for both engines: it speaks to a :class:`~pm.store._connection.Connection`
whose engine-specific parts (connecting, SQL dialect, which errors are storage faults) live in
``_sqlite_connection.py`` and ``_postgres_connection.py``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ..presence import DevicePresence
from ..schemas import BatchEntry, JobView, TaskView
from ..state import JobRecord, TaskRecord, TaskSelection
from . import _job_changes, _jobs
from ._connection import Connection
from ._devices import (
    DeviceTaskQuery,
    device_tasks,
    devices_with_tasks,
    load_presences,
    sent_tasks,
    task_counts,
)
from ._errors import StoreUnavailable
from ._ids import IdBlocks, reserve
from ._pending import PendingChanges, TaskRows
from ._rows import task_rows

if TYPE_CHECKING:
    from ..cluster._writes import ClusterWrites

logger = logging.getLogger(__name__)

Result = TypeVar("Result")

# Seconds between two attempts to commit while the storage refuses writes: short enough that
# the gateway is ready again soon after space returns, long enough not to spin on a full disk.
FAULT_RETRY_DELAY = 1.0


class Store:
    """Persistent jobs and tasks. Open with :func:`open_store`.

    Args:
      connection: an open, migrated connection (the store runs its own transactions).
      commit_interval: the group-commit window in seconds.
    """

    def __init__(self, connection: Connection, commit_interval: float) -> None:
        self._connection = connection
        self._inline = connection.inline
        self._commit_interval = commit_interval
        # One connection, used from one worker thread at a time.
        self._limiter = trio.CapacityLimiter(1)
        self._pending = PendingChanges()
        self._dirty = trio.Event()
        self._flush_now = trio.Event()
        self._commits_started = 0
        self._commits_done = 0
        self._committed = trio.Event()
        # The number of the last commit that reached the disk: sync() compares with it.
        self._last_good_commit = 0
        self.commits = 0
        self.rows_written = 0
        # Why the storage refuses writes (disk full, read-only...), None while commits work.
        self.fault: str | None = None
        # Commits that failed on a storage fault (each retried), for /metrics and tests.
        self.failed_commits = 0
        self._ids = IdBlocks()
        self._reserving = trio.Lock()
        # A clustered gateway's writes (attach_cluster); None for a single gateway.
        self._cluster: ClusterWrites | None = None
        self._statements = connection.statements
        self._new_task_rows: TaskRows = task_rows

    def attach_cluster(self, cluster: ClusterWrites) -> None:
        """Write ``cluster``'s changes in every commit from now on, and new tasks with their
        shard (``cluster.enabled``: :mod:`pm.cluster._writes`)."""
        self._cluster = cluster
        self._statements = cluster.statements
        self._new_task_rows = cluster.task_rows
        cluster.mark_dirty = self._mark_dirty

    # -- ids (unique across gateways sharing the database: _ids.py) ----------------------------

    async def allocate_ids(self, jobs: int, tasks: int) -> tuple[int, int]:
        """Reserve ``jobs`` job ids and ``tasks`` task ids; returns the first of each.

        Usually immediate; when the block in hand runs out it reserves a new one in the
        database first (one atomic statement, :mod:`pm.store._ids`). The final check and the
        hand-out happen with no checkpoint in between, so concurrent callers can never be
        handed ids beyond what the database reserved for this store.

        Error handling: raises :class:`~pm.store.StoreUnavailable` when a new block is needed
        and the database refuses the write (nothing is handed out; the next call retries).
        """
        while True:
            if not self._ids.shortfall(jobs, tasks):
                return self._ids.take(jobs, tasks)
            async with self._reserving:
                for kind, amount in self._ids.shortfall(jobs, tasks).items():
                    high_water = await self._in_thread(partial(reserve, kind=kind, amount=amount))
                    self._ids.reserved(kind, amount, high_water)

    @property
    def id_reservations(self) -> int:
        """Blocks of ids reserved in the database since the store opened."""
        return self._ids.reservations

    # -- recording changes (synchronous, never waits) ----------------------------------------

    def job_created(self, record: JobRecord, batch: Sequence[BatchEntry]) -> None:
        self._pending.job_created(record, batch)
        self._mark_dirty()

    # These two run for every change of every task: the event is set here, not through
    # _mark_dirty (a call more each).
    def job_changed(self, record: JobRecord) -> None:
        if self._pending.job_changed(record):
            self._dirty.set()

    def task_changed(self, task: TaskRecord) -> None:
        if self._pending.task_changed(task):
            self._dirty.set()

    def job_deleted(self, job_id: int) -> None:
        self._pending.job_deleted(job_id)
        self._mark_dirty()

    def presence_changed(self, record: DevicePresence) -> None:
        """A device's presence changed (:class:`pm.presence.PresenceBook`'s ``on_change``)."""
        self._pending.presence_changed(record)
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        self._dirty.set()

    @property
    def pending_changes(self) -> bool:
        return self._dirty.is_set()

    # -- the store actor ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit dirty rows in groups until cancelled; a final commit runs shielded.

        Error handling: a commit the storage refuses (disk full, read-only file or
        filesystem, I/O error, database server unreachable or read-only:
        ``Connection.is_storage_fault``) keeps its changes pending, sets
        :attr:`fault` and is retried every ``FAULT_RETRY_DELAY`` seconds until one succeeds,
        which clears it; the gateway goes on meanwhile (reads work, new jobs are refused).
        SQLite opens the file again by its path before each retry (so a filesystem mounted
        again after a disk error is reached); PostgreSQL reconnects if the connection was lost.
        Any other database error is a bug and ends the actor. A stop during a fault loses
        the changes still pending, and logs how many.
        """
        task_status.started()
        try:
            while True:
                await self._dirty.wait()
                with trio.move_on_after(self._commit_interval):
                    await self._flush_now.wait()
                if not await self._commit():
                    await trio.sleep(FAULT_RETRY_DELAY)
        finally:
            with trio.CancelScope(shield=True):
                if self._dirty.is_set() and not await self._commit():
                    logger.error(
                        "store: stopping with changes the database did not take (%s): "
                        "they are lost",
                        self.fault,
                        extra={"fault": self.fault},
                    )

    async def sync(self) -> None:
        """Return once every change recorded before this call is committed.

        Error handling: raises :class:`~pm.store.StoreUnavailable` if the commit that should
        have taken them failed (the changes stay pending and are retried).
        """
        if not self._dirty.is_set() and self._commits_started == self._commits_done:
            return
        target = self._commits_started + (1 if self._dirty.is_set() else 0)
        self._flush_now.set()
        while self._commits_done < target:
            await self._committed.wait()
        if self._last_good_commit < target:
            raise StoreUnavailable(f"the job store cannot write: {self.fault}")

    async def sync_for_reading(self) -> None:
        """:meth:`sync` when the storage takes writes; during a fault return at once, so
        reads answer from what is committed instead of waiting for the disk."""
        if self.fault is None:
            with contextlib.suppress(StoreUnavailable):
                await self.sync()

    async def _commit(self) -> bool:
        """One group commit; returns False if the storage refused it (see :meth:`run`)."""
        self._commits_started += 1
        this_commit = self._commits_started
        self._dirty = trio.Event()
        self._flush_now = trio.Event()
        window, self._pending = self._pending, PendingChanges()
        # Rows are built here, on the trio thread, so no row mixes two states of a record.
        statements, rows = window.statements(self._statements, self._new_task_rows)
        cluster = self._cluster
        cluster_window = None if cluster is None else cluster.take_window()

        def write(connection: Connection) -> int:
            written = rows
            with connection.transaction():
                for sql, rows_json in statements:
                    connection.execute(sql, (rows_json,))
                if cluster is not None and cluster_window:
                    written += cluster.write(connection, cluster_window)
            return written

        try:
            with trio.CancelScope(shield=True):
                # Shielded: a commit that started finishes, so a clean stop loses nothing.
                self.rows_written += await self._in_thread(write, translate=False)
        except self._connection.error_types as error:
            if not self._connection.is_storage_fault(error):
                raise
            self._pending.give_back(window)
            if cluster is not None and cluster_window is not None:
                cluster.give_back(cluster_window)
            self._mark_dirty()
            self._fault_seen(error)
            return False
        else:
            self.commits += 1
            self._last_good_commit = this_commit
            if cluster is not None and cluster_window is not None:
                cluster.committed(cluster_window)
            if self.fault is not None:
                logger.warning(
                    "store: commits work again after %d failed; nothing was lost",
                    self.failed_commits,
                )
                self.fault = None
            return True
        finally:
            self._commits_done += 1
            committed, self._committed = self._committed, trio.Event()
            committed.set()

    def _fault_seen(self, error: Exception) -> None:
        self.failed_commits += 1
        reason = self._connection.fault_reason(error)
        if self.fault is None:
            # Once per fault, not per retry: a full disk must not also fill the log.
            logger.error(
                "store: the database refuses writes: %s; new jobs are refused, changes are "
                "kept in memory and retried every %g s",
                reason,
                FAULT_RETRY_DELAY,
                extra={"fault": reason},
            )
        self.fault = reason

    # -- reads (job SQL in _jobs.py) -----------------------------------------------------------

    async def _in_thread(
        self, work: Callable[[Connection], Result], *, translate: bool = True
    ) -> Result:
        """Run ``work`` on the connection. Error handling: with ``translate``, a storage
        fault becomes :class:`~pm.store.StoreUnavailable` (the API answers it with 503)."""
        try:
            if self._inline:
                await trio.lowlevel.checkpoint()
                return work(self._connection)
            return await trio.to_thread.run_sync(work, self._connection, limiter=self._limiter)
        except self._connection.error_types as error:
            if translate and self._connection.is_storage_fault(error):
                raise StoreUnavailable(f"the job store cannot be used: {error}") from error
            raise

    async def list_jobs(
        self, *, limit: int, offset: int, status: str | None = None, outcome: str | None = None
    ) -> tuple[list[JobView], int]:
        """Jobs newest first (``collection`` = task ids), and the total matching.

        Reads what is committed: call :meth:`sync` first for up-to-date results.
        """
        return await self._in_thread(
            partial(_jobs.list_jobs, status=status, outcome=outcome, limit=limit, offset=offset)
        )

    async def load_job(self, job_id: int, tunnel_for: Callable[[str], str]) -> JobRecord | None:
        return await self._in_thread(partial(_jobs.load_job, job_id=job_id, tunnel_for=tunnel_for))

    async def load_task_page(
        self, job_id: int, selection: TaskSelection, tunnel_for: Callable[[str], str]
    ) -> tuple[list[TaskView], int] | None:
        """One page of a stored job's tasks and how many match; ``None``: no such job. A
        stored job is finished, so none of its tasks waits. Reads what is committed."""
        return await self._in_thread(
            partial(_jobs.job_task_page, job_id=job_id, selection=selection, tunnel_for=tunnel_for)
        )

    async def look_at_job(
        self, job_id: int, previously_unsettled: Collection[int], *, with_tasks: bool = True
    ) -> _job_changes.JobLook | None:
        """The committed row of a job and (``with_tasks``) its task rows that may have changed
        since a look that found ``previously_unsettled`` not final
        (:mod:`pm.store._job_changes`)."""
        return await self._in_thread(
            partial(
                _job_changes.look_at_job,
                job_id=job_id,
                previously_unsettled=previously_unsettled,
                with_tasks=with_tasks,
            )
        )

    async def tasks_of_rows(
        self, job_id: int, rows: Collection[tuple[Any, ...]], tunnel_for: Callable[[str], str]
    ) -> list[TaskRecord]:
        """The tasks of rows a :meth:`look_at_job` read, in id order."""
        return await self._in_thread(
            partial(_job_changes.tasks_of_rows, job_id=job_id, rows=rows, tunnel_for=tunnel_for)
        )

    def load_unfinished(self, tunnel_for: Callable[[str], str]) -> list[JobRecord]:
        """Jobs not final, oldest first, with all their tasks (called once, at start)."""
        return _jobs.load_unfinished(self._connection, tunnel_for)

    # -- devices (SQL in _devices.py) ----------------------------------------------------------

    def load_presences(self) -> list[DevicePresence]:
        """Every device's last known presence (called once, at start)."""
        return load_presences(self._connection)

    async def devices_with_tasks(self) -> set[str]:
        """Every device some committed task is for (:meth:`sync` first)."""
        return await self._in_thread(devices_with_tasks)

    async def task_counts(self, devices: Sequence[str]) -> dict[str, dict[str, int]]:
        """Committed tasks of each device by status (devices without tasks left out)."""
        return await self._in_thread(partial(task_counts, devices=devices))

    async def sent_tasks(self, devices: Sequence[str]) -> dict[str, int]:
        """The committed task each device has been sent and not yet answered (devices without
        one left out): its task in flight as of the last commit of whichever gateway serves it."""
        return await self._in_thread(partial(sent_tasks, devices=devices))

    async def device_tasks(
        self, device: str, query: DeviceTaskQuery
    ) -> tuple[list[TaskRecord], int]:
        """One device's committed tasks across jobs, newest first, and the total matching."""
        return await self._in_thread(partial(device_tasks, device=device, query=query))

    async def delete_finished_before(self, epoch_seconds: float) -> int:
        """Retention: delete finished jobs that ended before ``epoch_seconds``."""
        return await self._in_thread(
            partial(_jobs.delete_finished_before, epoch_seconds=epoch_seconds)
        )

    def close(self) -> None:
        self._connection.close()
