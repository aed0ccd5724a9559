"""A job followed through the database (pm/stored_job_feed.py): one store writes a job as its
owner gateway would, the follower feeds a watcher from a second store on the same SQLite
file, as a watcher on another gateway is fed. Real stores, real time with short intervals
and a hang guard."""

from __future__ import annotations

from pathlib import Path

import msgspec
import trio

from pm.config import WatchersConfig
from pm.jobs import Job
from pm.schemas import JobMessage, TaskMessage
from pm.store import Store
from pm.stored_job_feed import follow_stored_job
from tests.stores import CREATED, batch, create_job, running_store, tunnel_for

GUARD = 15.0
LOOK_INTERVAL = 0.05
_messages = msgspec.json.Decoder(JobMessage | TaskMessage)


async def stored_job(store: Store, job_id: int) -> Job:
    """The job as another gateway finds it (pm.engine.Engine.find): from the store."""
    record = await store.load_job(job_id, tunnel_for)
    assert record is not None and not record.final
    return Job(record, devices=None, recorder=store, watchers=WatchersConfig())  # type: ignore[arg-type]


async def test_a_watcher_follows_the_job_to_its_end_through_the_store(tmp_path: Path) -> None:
    location = str(tmp_path / "pm.db")
    with trio.fail_after(GUARD):
        async with running_store(location) as owner, running_store(location) as other:
            record = await create_job(owner, batch((["a", "b"], "/x")))
            a, b = record.tasks
            await owner.sync()
            job = await stored_job(other, record.id)
            received: list[JobMessage | TaskMessage] = []
            # Registered before anything is looked at: it takes every task change after.
            watcher = job.watch("each")

            async def watch() -> None:
                with watcher:
                    async for message in watcher:
                        received.append(_messages.decode(message))

            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: follow_stored_job(
                        other,
                        job,
                        interval=LOOK_INTERVAL,
                        tunnel_for=tunnel_for,
                        task_status=task_status,
                    )
                )
                nursery.start_soon(watch)
                for task in (a, b):
                    record.mark_sent(task, CREATED + 1)
                    record.settle(task, "resolved", {"ok": True}, CREATED + 2, 200)
                    owner.task_changed(task)
                    owner.job_changed(record)
                    await owner.sync()
            first, last = received[0], received[-1]
            assert isinstance(first, JobMessage)
            assert isinstance(last, JobMessage) and last.job.status == "resolved"
            assert last.job.finish_count == 2
            settled = [m.task for m in received if isinstance(m, TaskMessage)]
            assert {task.id for task in settled if task.task.status == "resolved"} == {a.id, b.id}
            assert job.ended.is_set()


async def test_a_job_deleted_meanwhile_ends_its_watchers_with_the_last_state_seen(
    tmp_path: Path,
) -> None:
    location = str(tmp_path / "pm.db")
    with trio.fail_after(GUARD):
        async with running_store(location) as owner, running_store(location) as other:
            record = await create_job(owner, batch((["a"], "/x")))
            await owner.sync()
            job = await stored_job(other, record.id)
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: follow_stored_job(
                        other,
                        job,
                        interval=LOOK_INTERVAL,
                        tunnel_for=tunnel_for,
                        task_status=task_status,
                    )
                )
                with job.watch("none") as watcher:
                    first = _messages.decode(await anext(watcher))
                    owner.job_deleted(record.id)
                    await owner.sync()
                    rest = [_messages.decode(message) async for message in watcher]
            assert isinstance(first, JobMessage) and first.job.status == "pending"
            # The close: the last state seen, then the end of the iteration.
            assert rest == [first]
