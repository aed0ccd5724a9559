"""The store's device side, on both engines: presence rows across a restart, a device's tasks
across jobs."""

from __future__ import annotations

import trio

from pm.presence import DevicePresence, Presence, PresenceBook
from pm.store import DeviceTaskQuery

from .stores import DatabaseUnderTest, batch, create_job, running_store, tunnel_for

GUARD = 10


async def test_presence_changes_survive_a_reopen(database: DatabaseUnderTest) -> None:
    path = database.location
    with trio.fail_after(GUARD):
        async with running_store(path) as store:
            book = PresenceBook(on_change=store.presence_changed)
            book.update("a", Presence.ONLINE, at=10.0)
            book.update("a", Presence.OFFLINE, at=20.0)
            book.update("b", Presence.ONLINE, at=15.0)
            await store.sync()
            # Three changes in one window, two devices: two rows.
            assert sorted(database.read("SELECT id, presence FROM devices")) == [
                ("a", "offline"),
                ("b", "online"),
            ]
        async with running_store(path) as store:
            reloaded = PresenceBook()
            reloaded.restore(store.load_presences())
    assert reloaded.record("a") == DevicePresence(
        id="a", presence=Presence.OFFLINE, last_seen=20.0, connected_at=10.0, disconnected_at=20.0
    )
    assert reloaded.presence("b") is Presence.ONLINE
    assert reloaded.presence("c") is Presence.UNKNOWN


async def test_a_devices_tasks_across_jobs_newest_first(database: DatabaseUnderTest) -> None:
    path = database.location
    with trio.fail_after(GUARD):
        async with running_store(path) as store:
            first = await create_job(store, batch((["a", "b"], "/1")))
            second = await create_job(store, batch(("a", "/2"), ("a", "/3")))
            second.tasks[0].status = "resolved"
            store.task_changed(second.tasks[0])
            await store.sync()
            everything = DeviceTaskQuery(status=None, limit=10, offset=0, tunnel_for=tunnel_for)
            tasks, total = await store.device_tasks("a", everything)
            page = DeviceTaskQuery(status=None, limit=1, offset=1, tunnel_for=tunnel_for)
            paged, paged_total = await store.device_tasks("a", page)
            pending = DeviceTaskQuery(status="pending", limit=10, offset=0, tunnel_for=tunnel_for)
            waiting, waiting_total = await store.device_tasks("a", pending)
            counts = await store.task_counts(["a", "b", "nobody"])
            devices = await store.devices_with_tasks()
    a_first = next(t for t in first.tasks if t.device == "a")
    assert [t.id for t in tasks] == [second.tasks[1].id, second.tasks[0].id, a_first.id]
    assert total == 3
    assert [t.id for t in paged] == [second.tasks[0].id] and paged_total == 3
    assert [t.id for t in waiting] == [second.tasks[1].id, a_first.id] and waiting_total == 2
    # A task read back is the one the job holds, resource, data and tunnel included.
    assert tasks[0].view() == second.tasks[1].view()
    assert counts == {"a": {"pending": 2, "resolved": 1}, "b": {"pending": 1}}
    assert devices == {"a", "b"}


async def test_each_devices_sent_task_in_one_read(database: DatabaseUnderTest) -> None:
    # What a clustered gateway shows as the task in flight of a device another gateway serves.
    with trio.fail_after(GUARD):
        async with running_store(database.location) as store:
            job = await create_job(store, batch(("a", "/1"), ("a", "/2"), ("b", "/1"), ("c", "/1")))
            a_first, a_second, b_only, c_only = job.tasks
            a_first.status = "resolved"
            a_second.status = "sent"
            b_only.status = "sent"
            for task in (a_first, a_second, b_only):
                store.task_changed(task)
            await store.sync()
            sent = await store.sent_tasks(["a", "b", "c", "nobody"])
            nothing = await store.sent_tasks([])
    # c's task is pending, not sent: nothing in flight.
    assert sent == {"a": a_second.id, "b": b_only.id}
    assert nothing == {}
