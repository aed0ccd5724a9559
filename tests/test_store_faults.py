"""The store on a storage that refuses writes: a real full disk (a small tmpfs filled to the
last byte), not a mock. Commits fail, changes stay pending, reads go on, and everything is
written once space returns.

Real files, real threads, so real time: short commit windows and a hang guard on each test.
"""

from __future__ import annotations

import pytest
import trio

from pm.store import Store, StoreUnavailable
from pm.store._ids import JOB_ID_BLOCK
from pm.store._store import FAULT_RETRY_DELAY
from tests.ext4_image import Ext4Image
from tests.small_filesystem import SmallFilesystem
from tests.stores import batch, create_job, read, running_store

# Hang guard: a fault, a retry or two (FAULT_RETRY_DELAY each) and the recovery.
GUARD = 10 + 4 * FAULT_RETRY_DELAY


async def recovered(store: Store) -> None:
    """Wait until a commit works again (the store retries by itself)."""
    while True:
        try:
            await store.sync()
        except StoreUnavailable:
            await trio.sleep(FAULT_RETRY_DELAY / 4)
            continue
        return


async def test_a_full_disk_keeps_every_change_and_writes_it_when_space_returns(
    disk: SmallFilesystem,
) -> None:
    path = disk.path / "pm.db"
    with trio.fail_after(GUARD):
        async with running_store(path) as store:
            devices = [f"dev-{n}" for n in range(100)]
            record = await create_job(store, batch((devices, "/a")))
            await store.sync()
            assert store.fault is None

            disk.fill()
            for position, task in enumerate(record.tasks):
                record.settle(task, "resolved", {"n": position, "pad": "x" * 200}, 1.0)
                store.task_changed(task)
            store.job_changed(record)
            with pytest.raises(StoreUnavailable, match="full"):
                await store.sync()
            assert store.fault is not None and "SQLITE_FULL" in store.fault
            # Reads answer from what was committed before the fault.
            views, total = await store.list_jobs(status=None, limit=10, offset=0)
            assert (total, views[0].status, views[0].done_count) == (1, "pending", 0)
            assert read(path, "SELECT count(*) FROM tasks WHERE status = 'resolved'") == [(0,)]

            # Changes recorded during the fault are kept as well, and the newest state wins.
            record.tasks[0].result = {"n": "newest"}
            store.task_changed(record.tasks[0])
            # A job created and deleted while the disk is full never reaches the database.
            doomed = await create_job(store, batch(("dev-x", "/b")))
            store.job_deleted(doomed.id)

            disk.free()
            await recovered(store)
            assert store.fault is None and store.failed_commits >= 1
            results = read(path, "SELECT id, status, result FROM tasks ORDER BY id")
    assert len(results) == len(devices)
    assert all(status == "resolved" for _, status, _ in results)
    assert results[0][2] == '{"n":"newest"}'
    assert results[1][2] == '{"n":1,"pad":"' + "x" * 200 + '"}'
    assert read(path, "SELECT id, status, finish_count FROM jobs") == [
        (record.id, "resolved", len(devices))
    ]


async def test_ids_that_need_a_new_block_are_refused_while_the_disk_is_full(
    disk: SmallFilesystem,
) -> None:
    path = disk.path / "pm.db"
    with trio.fail_after(GUARD):
        async with running_store(path) as store:
            await store.allocate_ids(1, 1)
            disk.fill()
            # The reserved block is used up: the next id needs a commit, which fails. Ids are
            # never handed out beyond what is on disk (a crash would then reuse them).
            with pytest.raises(StoreUnavailable):
                await store.allocate_ids(JOB_ID_BLOCK + 1, 1)
            disk.free()
            await recovered(store)
            first_job, _ = await store.allocate_ids(JOB_ID_BLOCK + 1, 1)
    assert first_job == 2
    assert read(path, "SELECT value FROM counters WHERE name = 'job'")[0][0] > JOB_ID_BLOCK + 1


async def test_a_filesystem_turned_read_only_under_the_open_database_recovers_once_remounted(
    ext4: Ext4Image,
) -> None:
    # ~2 s: two retries of FAULT_RETRY_DELAY, one that lets go of the unmounted filesystem
    # and one that opens the database on the new mount.
    path = ext4.path / "pm.db"
    with trio.fail_after(GUARD):
        async with running_store(path) as store:
            devices = [f"dev-{n}" for n in range(20)]
            record = await create_job(store, batch((devices, "/a")))
            await store.sync()

            await trio.to_thread.run_sync(ext4.fail)
            for task in record.tasks:
                record.settle(task, "resolved", {"ok": True}, 1.0)
                store.task_changed(task)
            store.job_changed(record)
            with pytest.raises(StoreUnavailable):
                await store.sync()
            assert store.fault is not None
            # Reads answer from what was committed before the fault.
            views, total = await store.list_jobs(status=None, limit=10, offset=0)
            assert (total, views[0].done_count) == (1, 0)

            # The operator's way back: unmount, check, mount again at the same path. The
            # check waits until nothing holds the failed filesystem (e2fsck refuses a device
            # in use, as for a real disk): the store must let go of its files even though
            # nothing is at the path to open instead.
            await trio.to_thread.run_sync(ext4.unmount)
            await ext4.checked_once_free()
            # Meanwhile reads of stored jobs answer that the store cannot be used, and no empty
            # database was created in the directory under the mount point.
            with pytest.raises(StoreUnavailable, match="unable to open database file"):
                await store.list_jobs(status=None, limit=10, offset=0)
            assert not path.exists()
            # Only a new open of the path reaches the repaired filesystem.
            await trio.to_thread.run_sync(ext4.mount_again)
            await recovered(store)
            assert store.fault is None
            views, total = await store.list_jobs(status=None, limit=10, offset=0)
            assert (total, views[0].status) == (1, "resolved")
        assert read(path, "SELECT status, finish_count FROM jobs") == [("resolved", len(devices))]
    assert read(path, "SELECT count(*) FROM tasks WHERE status = 'resolved'") == [(len(devices),)]
