"""Re-sends of in-flight requests across disconnects and restarts, on trio's virtual clock.

The rule (pm/in_flight.py, docs/protocol.md): one more copy, with the same id, when the
device comes back or is first seen after a restart; never on a timer; the task timeout
counts from the first send; an answer to any copy settles the task once. The same paths are
exercised through the real broker in tests/integration/test_resend.py.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from pm.config import Config, RecoveryConfig, StoreConfig, TasksConfig
from pm.engine import open_engine
from pm.presence import Presence
from pm.store import Store
from tests.fakes import RecordingPublisher, answer
from tests.job_api import entry, job_request
from tests.stores import running_store

EPOCH = 1_800_000_000.0
GUARD = 3600.0  # virtual seconds: far beyond every timeout below
TIMEOUT = 100.0


def wall_clock() -> float:
    """Wall time that follows trio's virtual clock, so downtime is a virtual sleep."""
    return EPOCH + trio.current_time()


def engine_on(
    store: Store, publisher: RecordingPublisher, *, resend_on_reconnect: bool = True
) -> Any:
    """An engine on ``store`` with the virtual wall clock; leaving it is a shutdown."""
    settings = Config(
        tasks=TasksConfig(default_timeout=TIMEOUT, resend_on_reconnect=resend_on_reconnect),
        store=StoreConfig(path=":memory:"),
        recovery=RecoveryConfig(resend_inflight=True),
    )
    return open_engine(settings, publisher, store, wall_clock=wall_clock)


def send_times(publisher: RecordingPublisher, start: float) -> list[float]:
    """Record when each request is published, in virtual seconds since ``start``."""
    times: list[float] = []
    publisher.on_publish = lambda topic, request: times.append(trio.current_time() - start)
    return times


# -- a device that goes away and comes back ------------------------------------------------


async def test_a_device_that_comes_back_gets_one_more_copy_and_its_timeout_keeps_counting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:") as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                start = trio.current_time()
                sent = send_times(publisher, start)
                engine.presence.update("dev", Presence.ONLINE, wall_clock())
                job = await engine.submit(job_request(entry("dev")))
                await trio.sleep(10)
                engine.presence.update("dev", Presence.OFFLINE, wall_clock())
                await trio.sleep(20)
                task = job.record.tasks[0]
                assert (task.status, task.sends) == ("sent", 1)  # away: still sent, not re-sent
                engine.presence.update("dev", Presence.ONLINE, wall_clock())
                await trio.testing.wait_all_tasks_blocked()
                # A repeated "online" (a retained birth replayed) is no return: no copy.
                engine.presence.update("dev", Presence.ONLINE, wall_clock() + 1)
                await job.ended.wait()
                # One copy when it came back (t=30), none on a timer; the timeout counted
                # from the first send (t=0), not from the re-send.
                assert sent == [0, 30]
                assert trio.current_time() - start == TIMEOUT
                assert (task.status, task.sends) == ("timeout", 2)
                assert [r["id"] for _, r in publisher.published] == [task.id, task.id]


async def test_an_answer_to_either_copy_settles_once_and_the_other_is_a_duplicate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:") as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                engine.presence.update("dev", Presence.ONLINE, wall_clock())
                job = await engine.submit(job_request(entry("dev")))
                await trio.testing.wait_all_tasks_blocked()
                engine.presence.update("dev", Presence.OFFLINE, wall_clock())
                engine.presence.update("dev", Presence.ONLINE, wall_clock())
                await trio.testing.wait_all_tasks_blocked()
                first, second = (request for _, request in publisher.published)
                assert first == second  # the same request, the same id
                # The device answers both copies (it replays its answer to a repeated id).
                answer(engine, first, data={"copy": 1})
                answer(engine, second, data={"copy": 2})
                await job.ended.wait()
                task = job.record.tasks[0]
                assert (task.status, task.result, task.sends) == ("resolved", {"copy": 1}, 2)
                assert job.record.finish_count == 1 and job.record.done_count == 1
                assert engine.fleet.dropped["duplicate_answer"] == 1
                assert engine.fleet.republished == 1


async def test_with_resend_on_reconnect_off_a_returning_device_gets_no_copy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:") as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with engine_on(store, publisher, resend_on_reconnect=False) as engine:
                engine.presence.update("dev", Presence.ONLINE, wall_clock())
                job = await engine.submit(job_request(entry("dev")))
                await trio.testing.wait_all_tasks_blocked()
                engine.presence.update("dev", Presence.OFFLINE, wall_clock())
                engine.presence.update("dev", Presence.ONLINE, wall_clock())
                engine.on_mqtt_connect(2)
                await job.ended.wait()
                assert len(publisher.published) == 1
                assert (job.record.tasks[0].status, job.record.tasks[0].sends) == ("timeout", 1)


async def test_a_request_sent_while_presence_was_unknown_goes_again_when_first_online(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Sent at once to an unknown device, the copy may have reached a broker the device was
    # not subscribed to yet: its first "online" (a birth) brings one more.
    async with running_store(":memory:") as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                job = await engine.submit(job_request(entry("dev")))
                await trio.testing.wait_all_tasks_blocked()
                assert len(publisher.published) == 1
                engine.presence.update("dev", Presence.ONLINE, wall_clock())
                await trio.testing.wait_all_tasks_blocked()
                assert len(publisher.published) == 2
                answer(engine, publisher.published[-1][1])
                await job.ended.wait()
                assert job.record.tasks[0].sends == 2


async def test_after_a_reconnect_a_device_known_online_gets_one_more_copy_when_it_announces(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The broker may have restarted: the copy sent at once on the gateway's reconnect can
    # reach it before the device has resubscribed. The device's next "online" (its birth
    # after its own reconnect) says a copy can reach it now.
    async with running_store(":memory:") as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                engine.presence.update("dev", Presence.ONLINE, wall_clock())
                job = await engine.submit(job_request(entry("dev")))
                await trio.testing.wait_all_tasks_blocked()
                engine.on_mqtt_connect(2)
                await trio.testing.wait_all_tasks_blocked()
                assert len(publisher.published) == 2  # at once
                engine.presence.update("dev", Presence.ONLINE, wall_clock() + 1)
                await trio.testing.wait_all_tasks_blocked()
                assert len(publisher.published) == 3  # at its announcement
                engine.presence.update("dev", Presence.ONLINE, wall_clock() + 2)
                await job.ended.wait()
                assert len(publisher.published) == 3  # and never again
                assert job.record.tasks[0].sends == 3


# -- a gateway restart ---------------------------------------------------------------------


async def test_a_restart_resends_a_sent_task_once_when_its_device_is_seen(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                engine.presence.update("dev", Presence.ONLINE, wall_clock())
                engine.presence.update("other", Presence.OFFLINE, wall_clock())
                job = await engine.submit(
                    job_request(entry("dev", "/sent"), entry("other", "/pending", expiresIn=50))
                )
                await trio.testing.wait_all_tasks_blocked()
                assert [r["resource"] for _, r in publisher.published] == ["/sent"]
                await trio.sleep(10)
            await trio.sleep(20)  # down from t=10 to t=30
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                restarted = trio.current_time()
                sent = send_times(publisher, 0.0)
                resumed = engine.get(job.id)
                assert resumed is not None
                held, pending = resumed.record.tasks
                assert (held.status, held.sends, pending.status) == ("sent", 1, "pending")
                # The device stays connected and says nothing: no copy, however long.
                await trio.sleep(15)
                assert sent == []
                # Its retained birth, replayed at the gateway's subscription, is a sighting.
                engine.presence.update("dev", Presence.ONLINE, wall_clock())
                await trio.testing.wait_all_tasks_blocked()
                engine.presence.update("dev", Presence.ONLINE, wall_clock() + 1)
                await trio.sleep(40)
                # Once, at the sighting (t=45), and never again.
                assert sent == [restarted + 15]
                # The pending task still waits for its device; it expires 50 s after the job
                # was created, not after the restart.
                assert pending.status == "expired" and pending.finish_at == EPOCH + 50
                await resumed.ended.wait()
                # The timeout counted from the first send (t=0), across the restart.
                assert trio.current_time() == TIMEOUT
                assert (held.status, held.sends) == ("timeout", 2)
                assert len(publisher.published) == 1


async def test_after_a_restart_a_sent_task_whose_device_never_returns_times_out_from_its_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The embedded broker's restart leaves every device offline until it returns: a device
    # that never does is sent nothing, and its task ends at its first send + its timeout.
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                engine.presence.update("dev", Presence.ONLINE, wall_clock())
                job = await engine.submit(job_request(entry("dev")))
                await trio.sleep(10)
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                engine.presence.all_disconnected(wall_clock())
                resumed = engine.get(job.id)
                assert resumed is not None
                await resumed.ended.wait()
                assert trio.current_time() == TIMEOUT
                assert resumed.record.tasks[0].status == "timeout"
                assert publisher.published == []


async def test_after_a_restart_an_answer_to_the_old_copy_settles_without_a_resend(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                job = await engine.submit(job_request(entry("dev")))
                await trio.testing.wait_all_tasks_blocked()
                [(_, request)] = publisher.published
                await trio.sleep(1)  # committed
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                resumed = engine.get(job.id)
                assert resumed is not None
                await trio.testing.wait_all_tasks_blocked()
                answer(engine, request)  # the device answered the copy sent before
                await resumed.ended.wait()
                assert resumed.record.tasks[0].status == "resolved"
                assert publisher.published == []


async def test_after_a_restart_any_message_from_a_device_of_unknown_presence_is_a_sighting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                job = await engine.submit(job_request(entry("dev")))
                await trio.sleep(1)  # sent and committed
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                resumed = engine.get(job.id)
                assert resumed is not None
                await trio.testing.wait_all_tasks_blocked()
                assert engine.presence.presence("dev") is Presence.UNKNOWN
                assert publisher.published == []
                # An answer to some other id (say, to a request of another controller).
                engine.on_mqtt_message("/remote/dev/response", b'{"id": 999999, "code": 200}')
                await trio.testing.wait_all_tasks_blocked()
                [(topic, request)] = publisher.published
                assert (topic, request["id"]) == ("/remote/dev", resumed.record.tasks[0].id)
                answer(engine, request)
                await resumed.ended.wait()
                assert resumed.record.tasks[0].sends == 2


async def test_waiting_reasons_sends_and_first_send_survive_a_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_store(":memory:", window=0.05) as store:
        with trio.fail_after(GUARD):
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                engine.presence.update("off", Presence.OFFLINE, wall_clock())
                job = await engine.submit(
                    job_request(entry("busy", "/1"), entry("busy", "/2"), entry("off", "/3"))
                )
                await trio.sleep(5)
                before = [(t.status, t.waiting, t.sends, t.sent_at) for t in job.record.tasks]
                assert before == [
                    ("sent", None, 1, EPOCH),
                    ("pending", "device-busy", 0, None),
                    ("pending", "device-offline", 0, None),
                ]
            publisher = RecordingPublisher()
            async with engine_on(store, publisher) as engine:
                # As stored, before the resumed job's actor has run at all.
                resumed = engine.get(job.id)
                assert resumed is not None
                after = [(t.status, t.waiting, t.sends, t.sent_at) for t in resumed.record.tasks]
                assert after == before
                views = [t.task for t in resumed.record.view("tasks").collection]  # type: ignore[union-attr]
                assert [(v.waiting, v.sends) for v in views] == [
                    (None, 1),
                    ("device-busy", 0),
                    ("device-offline", 0),
                ]
