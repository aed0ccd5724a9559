"""The store, against a real SQLite and a real PostgreSQL: migrations, ids, group commit, crash
consistency, listing and retention, and the engine's recovery on top of it.

Tests taking the ``database`` fixture run once per engine (a SQLite file, then a database of
the throwaway PostgreSQL server). Two kinds of store, two kinds of clock:

- ``:memory:`` runs SQLite on the trio thread, so those tests run on ``autojump_clock``
  (pytest-trio takes the clock only from the test's own arguments: each such test names it);
  they test the group commit's timing, which is the same code for both engines;
- a file or server store writes from a worker thread; those tests use real time, a short
  ``commit_interval``, and a ``trio.fail_after`` hang guard around everything that waits.

A "crash" is simulated by leaving the store's connection unclosed and recording changes that
no commit ever writes; reopening the same file then shows what a restarted gateway would see.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.lowlevel
import trio.testing

from pm.config import Config, RecoveryConfig, TasksConfig
from pm.engine import Engine, open_engine
from pm.job_options import DEFAULT_OPTIONS
from pm.job_recovery import RESTARTED_IN_FLIGHT
from pm.outcomes import OutcomeHistogram
from pm.presence import Presence
from pm.state import JobRecord
from pm.store import SCHEMA_VERSION, SchemaTooNew, Store, migrate, open_store
from pm.store._connection import Connection
from pm.store._ids import TASK_ID_BLOCK
from tests.fakes import RecordingPublisher, answer
from tests.job_api import entry, job_request
from tests.stores import (
    CREATED,
    FAST_WINDOW,
    DatabaseUnderTest,
    batch,
    connect,
    create_job,
    make_job,
    read,
    running_store,
    tunnel_for,
)
from tests.waiting import poll_until

# Hang guard for every file or server store test (real time): generous, each needs far less.
GUARD = 15.0


def assert_counts_agree(record: JobRecord) -> None:
    resolved = sum(task.status == "resolved" for task in record.tasks)
    failed = sum(task.final and task.status != "resolved" for task in record.tasks)
    assert (record.finish_count, record.error_count) == (resolved, failed)
    assert record.progress == sum(task.progress for task in record.tasks) // len(record.tasks)


@asynccontextmanager
async def crashing_store(path: str | Path, window: float = FAST_WINDOW) -> AsyncIterator[Store]:
    """An open store whose actor runs inside the block, then stops *without* a final commit
    and without closing: whatever is recorded after the block is never written (a crash)."""
    store = await open_store(path, commit_interval=window)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        yield store
        await store.sync()
        # Cancelled with nothing dirty: the actor's final commit has nothing to write.
        nursery.cancel_scope.cancel()


# -- migrations -------------------------------------------------------------------------------


async def test_a_fresh_database_ends_at_the_current_version(
    database: DatabaseUnderTest,
) -> None:
    with trio.fail_after(GUARD):
        store = await open_store(database.location, commit_interval=FAST_WINDOW)
        store.close()
    assert database.read("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    if database.engine == "sqlite":
        assert database.read("PRAGMA journal_mode") == [("wal",)]


def _write_first_release_job(connection: Connection) -> None:
    """A finished job and an unfinished one, written the way release 1 wrote them."""
    with connection.transaction():
        for statement in (
            "INSERT INTO jobs VALUES (1, 1700000000.0, 1700000005.0, NULL, 'resolved', 2, 1, 1,"
            " 100)",
            "INSERT INTO entries VALUES (1, 0, 'get', '/system/status', '{\"n\":0}')",
            "INSERT INTO tasks VALUES (1, 1, 0, 'a', 30.0, 'resolved', 100, '{\"ok\":1}',"
            " 1700000004.0)",
            "INSERT INTO tasks VALUES (2, 1, 0, 'b', 30.0, 'error', 100, '{\"code\":500}',"
            " 1700000005.0)",
            "INSERT INTO jobs VALUES (2, 1700000010.0, NULL, 600.0, 'dispatching', 1, 0, 0, 0)",
            "INSERT INTO entries VALUES (2, 0, 'put', '/network/ethernet', '{\"enable\":1}')",
            "INSERT INTO tasks VALUES (3, 2, 0, 'a', 30.0, 'sent', 0, NULL, NULL)",
            "INSERT INTO counters VALUES ('job', 10000), ('task', 1000002)",
        ):
            connection.execute(statement)


async def test_a_database_from_the_previous_schema_version_migrates(
    database: DatabaseUnderTest,
) -> None:
    path = database.location
    connection = connect(path)
    migrate(connection, target=1)
    _write_first_release_job(connection)
    connection.close()
    assert read(path, "SELECT version FROM schema_version") == [(1,)]
    assert "jobs_by_status" not in database.indexes("jobs")

    with trio.fail_after(GUARD):
        async with running_store(path) as store:
            finished = await store.load_job(1, tunnel_for)
            views, total = await store.list_jobs(status=None, limit=10, offset=0)
            unfinished = store.load_unfinished(tunnel_for)
            job_id, task_id = await store.allocate_ids(1, 1)

    assert read(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert {"jobs_by_status", "jobs_by_finish"} <= database.indexes("jobs")
    assert finished is not None
    view = finished.view("tasks")
    assert (view.status, view.finish_count, view.error_count, view.progress) == (
        "resolved",
        1,
        1,
        100,
    )
    assert [(t.destination, t.task.status, t.task.result) for t in view.collection] == [  # type: ignore[union-attr]
        ("a", "resolved", {"ok": 1}),
        ("b", "error", {"code": 500}),
    ]
    assert [t.data for t in view.collection] == [{"n": 0}, {"n": 0}]  # type: ignore[union-attr]
    assert total == 2
    assert [(v.id, v.status, v.collection) for v in views] == [
        (2, "dispatching", [3]),
        (1, "resolved", [1, 2]),
    ]
    assert [(r.id, [t.status for t in r.tasks]) for r in unfinished] == [(2, ["sent"])]
    assert unfinished[0].tasks[0].data == {"enable": 1}
    # Release 3's job counts are filled in from the tasks; tasks stored before have no expiry.
    assert [(v.id, v.pending_count, v.sent_count, v.expired_count) for v in views] == [
        (2, 0, 1, 0),
        (1, 0, 0, 0),
    ]
    assert unfinished[0].tasks[0].expires_at is None
    # Schema 5: a task sent or resolved before went out once; when is unknown; nothing waits.
    assert [(t.task.sends, t.task.waiting) for t in view.collection] == [(1, None), (0, None)]  # type: ignore[union-attr]
    resumed = unfinished[0].tasks[0]
    assert (resumed.sends, resumed.sent_at, resumed.waiting) == (1, None, None)
    # Outcomes are filled in from the stored tasks' statuses, their answer codes "unknown"
    # (no JSON functions in a migration both engines run); a finished job gets its summary.
    assert [(v.id, v.outcome, v.outcomes) for v in views] == [
        (2, None, OutcomeHistogram()),
        (1, "partial", OutcomeHistogram(resolved={"unknown": 1}, error={"unknown": 1})),
    ]
    assert finished.view().outcomes == views[1].outcomes
    # The rollout migration: a task sent before counts one attempt; a job has no options,
    # no hold, and ends "resolved" when its last task settles.
    assert [t.task.attempts for t in view.collection] == [1, 1]  # type: ignore[union-attr]
    rolled = unfinished[0]
    assert (rolled.tasks[0].attempts, rolled.tasks[0].request_id) == (1, 3)
    assert (rolled.options, rolled.holds, rolled.ending) == (DEFAULT_OPTIONS, [], "resolved")
    # The counters of release 1 still hold: no id is handed out twice.
    assert (job_id, task_id) == (10_001, 1_000_003)


async def test_a_database_from_a_newer_release_is_refused(database: DatabaseUnderTest) -> None:
    path = database.location
    with trio.fail_after(GUARD):
        store = await open_store(path, commit_interval=FAST_WINDOW)
        store.close()
    database.write("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew, match=str(SCHEMA_VERSION + 1)):
        await open_store(path, commit_interval=FAST_WINDOW)
    # Nothing was touched.
    assert read(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION + 1,)]


# -- ids ----------------------------------------------------------------------------------------


async def test_ids_are_never_reused_across_a_clean_reopen(database: DatabaseUnderTest) -> None:
    path = database.location
    with trio.fail_after(GUARD):
        async with running_store(path) as store:
            assert await store.allocate_ids(1, 3) == (1, 1)
            assert await store.allocate_ids(2, 5) == (2, 4)
        async with running_store(path) as store:
            job_id, task_id = await store.allocate_ids(1, 1)
    assert job_id > 3 and task_id > 8


async def test_ids_are_never_reused_after_a_crash(database: DatabaseUnderTest) -> None:
    path = database.location
    with trio.fail_after(GUARD):
        # Only the reservation commits are ever written; the store is never closed.
        async with crashing_store(path) as store:
            await store.allocate_ids(1, 5)
            # Ends exactly at the reserved block's end: no new reservation.
            reservations = store.id_reservations
            first_job, first_task = await store.allocate_ids(1, TASK_ID_BLOCK)
            assert store.id_reservations == reservations
            # One id past the block: reserves (in the database) before it returns.
            last_job, last_task = await store.allocate_ids(1, 1)
            assert store.id_reservations == reservations + 1
        assert (first_task, last_task) == (6, TASK_ID_BLOCK + 6)
        # Changes recorded after the last commit are lost, the reservation is not.
        store.job_created(make_job(last_job, last_task, batch(("a", "/x"))), batch(("a", "/x")))
        async with running_store(path) as reopened:
            job_id, task_id = await reopened.allocate_ids(1, 1)
            assert await reopened.load_job(last_job, tunnel_for) is None
    assert job_id > last_job and task_id > last_task


# -- group commit -------------------------------------------------------------------------------


async def test_many_changes_to_one_task_in_a_window_are_one_commit_and_one_update(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=1.0) as store:
        record = await create_job(store, batch((["a", "b"], "/x")))
        await store.sync()
        commits, rows = store.commits, store.rows_written
        task = record.tasks[0]
        start = trio.current_time()
        record.mark_sent(task, 1.0)
        store.task_changed(task)
        for progress in range(1, 60):
            assert record.mark_progress(task, progress)
            store.task_changed(task)
            await trio.sleep(0.01)
        await trio.sleep(1.0)  # the window has closed by now, without sync()
        assert trio.current_time() - start == pytest.approx(1.59)
        assert (store.commits, store.rows_written) == (commits + 1, rows + 1)
        loaded = await store.load_job(record.id, tunnel_for)
    assert loaded is not None and loaded.tasks[0].progress == 59


async def test_a_window_commits_every_change_in_one_transaction(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.5) as store:
        start = trio.current_time()
        record = await create_job(store, batch((["a", "b", "c"], "/x")))
        # The first commit (the id reservation) waited for nothing but itself.
        assert trio.current_time() == start
        commits = store.commits
        for task in record.tasks:
            record.mark_sent(task, 1.0)
            store.task_changed(task)  # ignored: the job is not written yet, its row will be
        store.job_changed(record)
        await trio.sleep(0.49)
        assert store.commits == commits
        await trio.sleep(0.02)
        assert store.commits == commits + 1
        loaded = await store.load_job(record.id, tunnel_for)
    assert loaded is not None
    assert [t.status for t in loaded.tasks] == ["sent"] * 3
    assert loaded.status == "dispatching"


async def test_sync_returns_only_once_the_change_is_on_disk(database: DatabaseUnderTest) -> None:
    path = database.location
    with trio.fail_after(GUARD):
        # A long window: only sync() can make this commit happen in time.
        async with running_store(path, window=60.0) as store:
            record = await create_job(store, batch((["a", "b"], "/x")))
            await store.sync()
            assert read(path, "SELECT status FROM tasks ORDER BY id") == [("pending",)] * 2
            record.settle(record.tasks[1], "resolved", {"ok": 1}, CREATED + 1)
            store.task_changed(record.tasks[1])
            store.job_changed(record)
            assert read(path, "SELECT status FROM tasks ORDER BY id") == [("pending",)] * 2
            await store.sync()
            # (result is JSON, stored as the BLOB msgspec encodes)
            assert read(path, "SELECT status, CAST(result AS TEXT) FROM tasks ORDER BY id") == [
                ("pending", None),
                ("resolved", '{"ok":1}'),
            ]
            assert read(path, "SELECT finish_count FROM jobs") == [(1,)]


async def test_sync_during_a_commit_with_nothing_new_returns(database: DatabaseUnderTest) -> None:
    """A read (GET /jobs) that arrives while a commit is being written, on an otherwise idle
    gateway, must not wait for a commit that nothing will ever start."""
    path = database.location
    with trio.fail_after(GUARD):
        async with running_store(path, window=0.0) as store:
            await create_job(store, batch(("a", "/x")))
            # Wait until the job's commit is under way in the worker thread.
            while store._commits_started == store._commits_done:  # noqa: ASYNC110 (no event to wait on)
                await trio.lowlevel.checkpoint()
            assert not store.pending_changes
            with trio.move_on_after(1.0) as hang:
                await store.sync()
            assert not hang.cancelled_caught, "sync() waited for a commit that never comes"


# -- crash consistency --------------------------------------------------------------------------


async def test_a_crash_loses_only_what_was_not_committed_and_stays_consistent(
    database: DatabaseUnderTest,
) -> None:
    path = database.location
    with trio.fail_after(GUARD):
        async with crashing_store(path) as store:
            record = await create_job(store, batch((["a", "b", "c"], "/x"), ("a", "/y")))
            a_x, b_x, c_x, a_y = record.tasks
            for task in (a_x, b_x, c_x):
                record.mark_sent(task, 1.0)
                store.task_changed(task)
            record.settle(a_x, "resolved", {"ok": 1}, CREATED + 1)
            record.mark_progress(b_x, 40)
            for task in (a_x, b_x):
                store.task_changed(task)
            store.job_changed(record)
        # Recorded, never committed: lost in the crash.
        record.settle(b_x, "error", {"code": 500}, CREATED + 2)
        record.settle(c_x, "resolved", {"ok": 2}, CREATED + 3)
        for task in (b_x, c_x):
            store.task_changed(task)
        store.job_changed(record)

        async with running_store(path) as reopened:
            loaded = await reopened.load_job(record.id, tunnel_for)
            views, _ = await reopened.list_jobs(status=None, limit=10, offset=0)
            unfinished = reopened.load_unfinished(tunnel_for)
    assert loaded is not None
    assert [(t.status, t.progress, t.result) for t in loaded.tasks] == [
        ("resolved", 100, {"ok": 1}),
        ("sent", 40, None),
        ("sent", 0, None),
        ("pending", 0, None),
    ]
    assert (loaded.status, loaded.finish_count, loaded.error_count) == ("dispatching", 1, 0)
    assert loaded.progress == (100 + 40) // 4
    assert_counts_agree(loaded)
    # The job row written in the same transaction agrees with the task rows too.
    (view,) = views
    assert (view.finish_count, view.error_count, view.done_count, view.progress) == (1, 0, 1, 35)
    assert [r.id for r in unfinished] == [record.id]


async def test_restore_trusts_the_tasks_over_the_job_row(database: DatabaseUnderTest) -> None:
    path = database.location
    with trio.fail_after(GUARD):
        async with running_store(path) as store:
            record = await create_job(store, batch((["a", "b"], "/x")))
            record.mark_sent(record.tasks[0], 1.0)
            record.settle(record.tasks[0], "timeout", None, CREATED + 1)
            store.task_changed(record.tasks[0])
            store.job_changed(record)
        database.write("UPDATE jobs SET finish_count = 2, error_count = 0, progress = 7")
        async with running_store(path) as store:
            loaded = await store.load_job(record.id, tunnel_for)
    assert loaded is not None
    assert (loaded.finish_count, loaded.error_count, loaded.progress) == (0, 1, 50)
    assert_counts_agree(loaded)


async def test_answer_codes_and_outcomes_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.db"
    with trio.fail_after(GUARD):
        async with running_store(path) as store:
            record = await create_job(store, batch((["a", "b", "c"], "/x")))
            for task, status, code in zip(
                record.tasks, ("resolved", "error", "timeout"), (201, 503, None), strict=True
            ):
                record.mark_sent(task, 1.0)
                record.settle(task, status, None, CREATED + 1, code)  # type: ignore[arg-type]
                store.task_changed(task)
            store.job_changed(record)
        async with running_store(path) as store:
            loaded = await store.load_job(record.id, tunnel_for)
            [listed], _ = await store.list_jobs(limit=10, offset=0, outcome="partial")
    expected = OutcomeHistogram(resolved={"201": 1}, error={"503": 1}, timeout=1)
    assert loaded is not None and [task.code for task in loaded.tasks] == [201, 503, None]
    # Restored from the tasks' codes, and listed from the job row: the same histogram.
    assert loaded.view().outcomes == listed.outcomes == expected
    assert (loaded.view().outcome, listed.outcome) == ("partial", "partial")


# -- listing, retention, deletion ---------------------------------------------------------------


def _finish(record: JobRecord, status: str, at: float) -> None:
    if status == "resolved":
        for task in record.tasks:
            record.settle(task, "resolved", None, at)
    elif status in ("timeout", "cancelled"):
        record.finish(status, at)  # type: ignore[arg-type]
    elif status == "dispatching":
        record.mark_sent(record.tasks[0], 1.0)


async def test_list_jobs_pages_newest_first_filters_and_counts(
    database: DatabaseUnderTest,
) -> None:
    statuses = ["resolved", "timeout", "pending", "resolved", "dispatching", "cancelled"] * 5
    with trio.fail_after(GUARD):
        async with running_store(database.location, window=1.0) as store:
            records = []
            for status in statuses:
                record = await create_job(store, batch((["a", "b"], "/x")))
                _finish(record, status, CREATED + record.id)
                records.append(record)
            await store.sync()
            first, total = await store.list_jobs(status=None, limit=7, offset=0)
            second, _ = await store.list_jobs(status=None, limit=7, offset=7)
            last, _ = await store.list_jobs(status=None, limit=7, offset=28)
            beyond, beyond_total = await store.list_jobs(status=None, limit=7, offset=30)
            resolved, resolved_total = await store.list_jobs(status="resolved", limit=4, offset=2)
            none, none_total = await store.list_jobs(status="nonexistent", limit=4, offset=0)
        ids = [r.id for r in records]
        assert total == 30 and beyond_total == 30
        assert [v.id for v in first + second] == ids[::-1][:14]
        assert [v.id for v in last] == ids[1::-1]
        assert beyond == []
        expected_resolved = [r.id for r in records if r.status == "resolved"][::-1]
        assert resolved_total == len(expected_resolved) == 10
        assert [v.id for v in resolved] == expected_resolved[2:6]
        assert all(v.status == "resolved" for v in resolved)
        assert (none, none_total) == ([], 0)
        newest = records[-1]
        assert first[0].collection == [t.id for t in newest.tasks]
        assert first[0].total_count == 2 and first[0].status == "cancelled"


async def test_delete_finished_before_deletes_only_old_finished_jobs(
    database: DatabaseUnderTest,
) -> None:
    path = database.location
    with trio.fail_after(GUARD):
        async with running_store(path) as store:
            old = await create_job(store, batch((["a", "b"], "/x"), ("c", "/y")))
            _finish(old, "resolved", CREATED + 100)
            old_timeout = await create_job(store, batch(("a", "/x")))
            _finish(old_timeout, "timeout", CREATED + 120)
            recent = await create_job(store, batch(("a", "/x")))
            _finish(recent, "cancelled", CREATED + 200)
            # Created long ago, still running: never deleted by retention.
            running = await create_job(store, batch(("a", "/x")), created_at=CREATED - 10_000)
            await store.sync()
            assert await store.delete_finished_before(CREATED + 150) == 2
            assert await store.delete_finished_before(CREATED + 150) == 0
            views, total = await store.list_jobs(status=None, limit=10, offset=0)
    assert total == 2 and [v.id for v in views] == [running.id, recent.id]
    gone = (old.id, old_timeout.id)
    for table, column in (("jobs", "id"), ("tasks", "job_id"), ("entries", "job_id")):
        assert read(path, f"SELECT count(*) FROM {table} WHERE {column} IN (?, ?)", gone) == [(0,)]
    assert read(path, "SELECT count(*) FROM tasks") == [(2,)]
    assert read(path, "SELECT count(*) FROM entries") == [(2,)]


async def test_job_deleted_removes_a_job_its_tasks_and_entries(database: DatabaseUnderTest) -> None:
    path = database.location
    with trio.fail_after(GUARD):
        async with running_store(path) as store:
            doomed = await create_job(store, batch((["a", "b"], "/x"), ("a", "/y")))
            kept = await create_job(store, batch(("a", "/x")))
            await store.sync()
            # Changes still pending for the job when it is deleted are not written back.
            doomed.mark_sent(doomed.tasks[0], 1.0)
            store.task_changed(doomed.tasks[0])
            store.job_changed(doomed)
            store.job_deleted(doomed.id)
            await store.sync()
            assert await store.load_job(doomed.id, tunnel_for) is None
            views, total = await store.list_jobs(status=None, limit=10, offset=0)
    assert (total, [v.id for v in views]) == (1, [kept.id])
    for table, column in (("jobs", "id"), ("tasks", "job_id"), ("entries", "job_id")):
        assert read(path, f"SELECT count(*) FROM {table} WHERE {column} = ?", (doomed.id,)) == [
            (0,)
        ]


async def test_a_job_created_and_deleted_in_one_window_never_reaches_the_database(
    database: DatabaseUnderTest,
) -> None:
    with trio.fail_after(GUARD):
        # A long window: only sync() commits, so the job's whole life falls in one window.
        async with running_store(database.location, window=60.0) as store:
            await store.allocate_ids(10, 10)  # reserve up front: the next commit is this window's
            await store.sync()
            commits, rows = store.commits, store.rows_written
            record = await create_job(store, batch((["a", "b"], "/x")))
            record.mark_sent(record.tasks[0], 1.0)
            store.task_changed(record.tasks[0])
            store.job_changed(record)
            store.job_deleted(record.id)
            await store.sync()
            assert store.commits <= commits + 1
            # The one row written is the no-op UPDATE of a task whose job row never existed.
            assert store.rows_written - rows <= 1
            assert await store.load_job(record.id, tunnel_for) is None
            assert await store.list_jobs(status=None, limit=10, offset=0) == ([], 0)


# -- the engine's recovery on a file database ---------------------------------------------------


def engine_config(database: DatabaseUnderTest, **sections: Any) -> Config:
    return Config(
        tasks=TasksConfig(default_timeout=30.0, device_idle_retire=5.0),
        store=database.store_config(commit_interval=FAST_WINDOW),
        **sections,
    )


@asynccontextmanager
async def engine_on(config: Config, publisher: RecordingPublisher) -> AsyncIterator[Engine]:
    """An engine that is stopped like a shutdown: its scope is cancelled on exit."""
    async with open_engine(config, publisher) as engine:
        yield engine


async def run_until_stopped(
    config: Config, scenario: Callable[[Engine, RecordingPublisher], Any]
) -> RecordingPublisher:
    publisher = RecordingPublisher()
    async with engine_on(config, publisher) as engine:
        await scenario(engine, publisher)
    return publisher


async def test_restart_resumes_pending_in_order_and_resends_in_flight(
    database: DatabaseUnderTest,
) -> None:
    config = engine_config(database)
    state: dict[str, Any] = {}

    async def before(engine: Engine, publisher: RecordingPublisher) -> None:
        job = await engine.submit(
            job_request(
                entry(["a", "b"], "/1"),
                entry("a", "/2"),
                entry("a", "/3"),
                entry(["a", "b"], "/4"),
            )
        )
        await poll_until(lambda: len(publisher.published) == 2)
        answer(engine, publisher.requests_to("/remote/a")[0])  # a /1 resolves, a /2 goes out
        await poll_until(lambda: len(publisher.published) == 3)
        assert [r["resource"] for r in publisher.requests_to("/remote/a")] == ["/1", "/2"]
        await poll_until(lambda: job.record.tasks[2].status == "sent")
        state["job"] = job.id
        state["ids"] = {(t.device, t.resource): t.id for t in job.record.tasks}

    with trio.fail_after(GUARD):
        await run_until_stopped(config, before)
        publisher = RecordingPublisher()
        async with engine_on(config, publisher) as engine:
            job = engine.get(state["job"])
            assert job is not None and not job.final
            assert [t.status for t in job.record.tasks] == [
                "resolved", "sent", "sent", "pending", "pending", "pending",
            ]  # fmt: skip
            # The in-flight tasks hold their devices' turn, and nothing goes out until a
            # device is seen: no re-send on a timer.
            await trio.testing.wait_all_tasks_blocked()
            assert publisher.published == []
            # Once seen (a birth), each goes out again once, with its id.
            for device in ("a", "b"):
                engine.presence.update(device, Presence.ONLINE, time.time())
            await poll_until(lambda: len(publisher.published) == 2)
            resent = {topic: request for topic, request in publisher.published}
            assert resent["/remote/a"]["id"] == state["ids"][("a", "/2")]
            assert resent["/remote/b"]["id"] == state["ids"][("b", "/1")]
            # Pending tasks follow in their original order, one in flight per device.
            while not job.final:
                await poll_until(lambda: engine.fleet.in_flight > 0 or job.final)
                for device in ("a", "b"):
                    requests = publisher.requests_to(f"/remote/{device}")
                    if requests[-1]["id"] == engine.fleet.task_in_flight(device):
                        answer(engine, requests[-1])
                await trio.sleep(0.005)
            order = [(topic, r["resource"], r["id"]) for topic, r in publisher.published]
    assert [o for o in order if o[0] == "/remote/a"] == [
        ("/remote/a", "/2", state["ids"][("a", "/2")]),
        ("/remote/a", "/3", state["ids"][("a", "/3")]),
        ("/remote/a", "/4", state["ids"][("a", "/4")]),
    ]
    assert [o for o in order if o[0] == "/remote/b"] == [
        ("/remote/b", "/1", state["ids"][("b", "/1")]),
        ("/remote/b", "/4", state["ids"][("b", "/4")]),
    ]
    assert job.record.status == "resolved" and job.record.finish_count == 6
    # Two copies of each task in flight at the restart, one of every other.
    assert [t.sends for t in job.record.tasks] == [1, 2, 2, 1, 1, 1]


async def test_restart_without_resend_fails_in_flight_tasks(database: DatabaseUnderTest) -> None:
    config = engine_config(database, recovery=RecoveryConfig(resend_inflight=False))
    state: dict[str, Any] = {}

    async def before(engine: Engine, publisher: RecordingPublisher) -> None:
        job = await engine.submit(job_request(entry("a", "/1"), entry("a", "/2"), entry("b", "/1")))
        await poll_until(lambda: all(job.record.tasks[i].status == "sent" for i in (0, 2)))
        state["job"] = job.id

    with trio.fail_after(GUARD):
        await run_until_stopped(config, before)
        publisher = RecordingPublisher()
        async with engine_on(config, publisher) as engine:
            job = engine.get(state["job"])
            assert job is not None
            a1, a2, b1 = job.record.tasks
            for task in (a1, b1):
                assert task.status == "error"
                assert "restarted" in json.dumps(task.result)
                assert task.result == {"error": RESTARTED_IN_FLIGHT}
            # The pending task still goes out, and it alone: nothing is re-sent.
            await poll_until(lambda: len(publisher.published) == 1)
            ((topic, request),) = publisher.published
            assert (topic, request["id"]) == ("/remote/a", a2.id)
            answer(engine, request)
            await job.ended.wait()
            assert (job.record.status, job.record.finish_count, job.record.error_count) == (
                "resolved",
                1,
                2,
            )
            await engine.store.sync()
            stored = await engine.store.load_job(job.id, tunnel_for)
    assert stored is not None
    assert [t.status for t in stored.tasks] == ["error", "resolved", "error"]


async def test_a_finished_job_is_readable_after_a_restart(database: DatabaseUnderTest) -> None:
    config = engine_config(database)
    state: dict[str, Any] = {}

    async def before(engine: Engine, publisher: RecordingPublisher) -> None:
        publisher.on_publish = lambda topic, request: answer(
            engine, request, data={"echo": request["resource"]}
        )
        job = await engine.submit(job_request(entry(["a", "b"], "/1"), entry("a", "/2")))
        await job.ended.wait()
        state["job"] = job.id
        state["view"] = msgspec.to_builtins(job.record.view("tasks"))

    with trio.fail_after(GUARD):
        await run_until_stopped(config, before)
        async with engine_on(config, RecordingPublisher()) as engine:
            assert engine.get(state["job"]) is None
            job = await engine.find(state["job"])
            assert job is not None and job.final
            views, total = await engine.list()
            resolved, _ = await engine.list(status="resolved")
            assert await engine.find(state["job"] + 1) is None
            watcher_ended = job.ended.is_set()
    assert msgspec.to_builtins(job.record.view("tasks")) == state["view"]
    assert state["view"]["collection"][0]["__task"]["result"] == {"echo": "/1"}
    assert total == 1
    assert msgspec.to_builtins(views[0]) == {
        **state["view"],
        "collection": [t["id"] for t in state["view"]["collection"]],
    }
    assert [v.id for v in resolved] == [state["job"]]
    assert watcher_ended


async def test_delete_removes_a_stored_job_for_good(database: DatabaseUnderTest) -> None:
    config = engine_config(database)
    state: dict[str, Any] = {}

    async def before(engine: Engine, publisher: RecordingPublisher) -> None:
        publisher.on_publish = lambda topic, request: answer(engine, request)
        job = await engine.submit(job_request(entry("a", "/1")))
        await job.ended.wait()
        state["job"] = job.id

    with trio.fail_after(GUARD):
        await run_until_stopped(config, before)
        async with engine_on(config, RecordingPublisher()) as engine:
            view = await engine.delete(state["job"])
            assert view is not None and view.status == "resolved"
            assert await engine.find(state["job"]) is None
        async with engine_on(config, RecordingPublisher()) as engine:
            assert await engine.find(state["job"]) is None
            assert await engine.list() == ([], 0)
