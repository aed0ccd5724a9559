"""Watchers of one job written to together (pm/watch_group.py), through the real server and
real WebSocket clients: what a member joining late gets, the messages built once for all,
the writes going on when the member whose task ran them leaves, a stalled member cut off
alone. The protocol itself is the contract of tests/integration/test_watch_ws.py and the
tests/test_http_*.py WebSocket tests, which run over this same path."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
import trio
from trio_websocket import open_websocket_url
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, TextMessage

import pm.watch
from pm.watch_group import WatchGroup
from tests.job_api import entry
from tests.served_app import ServedGateway, app_config, receive_all, serve_app
from tests.test_http_hostile_clients import heavy_job, never_reading_watcher, read_until_closed
from tests.waiting import poll_until

GUARD = 30.0


def resolved_ids(messages: list[dict[str, Any]]) -> list[int]:
    """The task ids a watcher saw resolved, in order (batch messages)."""
    return [
        task["id"]
        for message in messages
        if message["type"] == "tasks"
        for task in message["tasks"]
        if task["__task"]["status"] == "resolved"
    ]


async def held_job(gateway: ServedGateway, devices: int) -> tuple[int, list[dict[str, Any]]]:
    """A job whose devices answer only when the test says so, every request sent."""
    gateway.devices.auto_answer = False
    job = await gateway.submit(entry([f"d{n}" for n in range(devices)]))
    await poll_until(lambda: len(gateway.devices.requests) == devices)
    return int(job["id"]), gateway.devices.requests


async def answer(gateway: ServedGateway, job_id: int, requests: list[dict[str, Any]]) -> None:
    """Answer ``requests`` and wait until the job has applied them."""
    done = gateway.job(job_id).record.view(None).done_count
    for request in requests:
        gateway.devices.answer(request)
    await poll_until(
        lambda: gateway.job(job_id).record.view(None).done_count == done + len(requests)
    )


async def test_a_late_member_gets_exactly_the_changes_after_its_first_snapshot() -> None:
    with trio.fail_after(GUARD):
        async with serve_app(app_config()) as gateway:
            job_id, requests = await held_job(gateway, 40)
            # A long interval: the group's next write, after B joins, still holds the changes
            # of the first half, which B must not get (they are in its first snapshot).
            url = f"{gateway.ws_url}/jobs/{job_id}/ws?tasks=batch&interval=0.5"
            async with open_websocket_url(url) as early:
                await early.get_message()
                await answer(gateway, job_id, requests[:20])
                async with open_websocket_url(url) as late:
                    await answer(gateway, job_id, requests[20:])
                    early_messages, _ = await receive_all(early)
                    late_messages, code = await receive_all(late)
    assert code == 1000
    first, final = late_messages[0]["job"], late_messages[-1]["job"]
    assert (first["doneCount"], final["doneCount"]) == (20, 40)
    answered_late = {request["id"] for request in requests[20:]}
    assert sorted(resolved_ids(late_messages)) == sorted(
        task_id for task_id in resolved_ids(early_messages) if task_id in answered_late
    )
    assert len(resolved_ids(late_messages)) == 20
    assert len(resolved_ids(early_messages)) == 40
    # No snapshot older than the first: the counts never go back.
    counts = [message["job"]["doneCount"] for message in late_messages if message["type"] == "job"]
    assert counts == sorted(counts)


async def test_the_handshakes_answer_and_the_first_message_go_in_one_write(
    watcher_writes: list[bytes],
) -> None:
    with trio.fail_after(GUARD):
        async with serve_app(app_config()) as gateway:
            job_id, requests = await held_job(gateway, 2)
            async with open_websocket_url(f"{gateway.ws_url}/jobs/{job_id}/ws") as watcher:
                first = json.loads(await watcher.get_message())
                gateway.devices.answer_all()
                await receive_all(watcher)
    assert first["type"] == "job"
    (answer,) = [data for data in watcher_writes if data.startswith(b"HTTP/1.1 101 ")]
    _, _, frames = answer.partition(b"\r\n\r\n")
    # After the answer, in the same write: one whole text frame (its length in 16 bits), the
    # first job snapshot.
    assert frames[:2] == b"\x81\x7e" and int.from_bytes(frames[2:4], "big") == len(frames) - 4
    assert msgspec.json.decode(frames[4:]) == first


async def test_a_late_each_member_gets_the_groups_lagging_task_messages() -> None:
    # A budget of 8 task messages a second for 2 "each" watchers: 1 each per 0.25 s window.
    # The group's lead lags the job; a member that joins meanwhile gets its task messages as
    # they come (as a lagging watcher of its own would), not nothing until the lead reaches
    # the changes after its join (at the job's end the lead drops what it still holds).
    config = app_config(watchers={"coalesce_interval": 0.25, "max_task_messages_per_second": 8})
    with trio.fail_after(GUARD):
        async with serve_app(config) as gateway:
            job_id, requests = await held_job(gateway, 40)
            url = f"{gateway.ws_url}/jobs/{job_id}/ws?tasks=each"
            async with open_websocket_url(url) as early:
                await early.get_message()
                await answer(gateway, job_id, requests[:20])
                async with open_websocket_url(url) as late:
                    task_messages = 0
                    while task_messages < 3:
                        message = json.loads(await late.get_message())
                        task_messages += message["type"] == "task"
                    await answer(gateway, job_id, requests[20:])
                    messages, code = await receive_all(late)
    assert code == 1000
    assert messages[-1]["job"]["status"] == "resolved"


async def test_the_messages_of_a_write_are_built_once_for_all_members(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built = 0
    take_batch = pm.watch.take_batch

    def counted(views: Any) -> bytes:
        nonlocal built
        built += 1
        return take_batch(views)

    monkeypatch.setattr(pm.watch, "take_batch", counted)
    members = 20
    with trio.fail_after(GUARD):
        async with serve_app(app_config()) as gateway:
            job_id, requests = await held_job(gateway, 40)
            url = f"{gateway.ws_url}/jobs/{job_id}/ws?tasks=batch"
            received: list[list[dict[str, Any]]] = []
            async with trio.open_nursery() as nursery:
                for _ in range(members):
                    await nursery.start(_watch_to_end, url, received)
                for half in (requests[:20], requests[20:]):
                    await answer(gateway, job_id, half)
    assert len(received) == members
    assert all(len(resolved_ids(messages)) == 40 for messages in received)
    # One watcher's batch messages, built once for the group: not once per member.
    per_member = max(sum(m["type"] == "tasks" for m in messages) for messages in received)
    assert built <= per_member + 1, (built, per_member)


async def _watch_to_end(
    url: str, received: list[list[dict[str, Any]]], *, task_status: trio.TaskStatus[None]
) -> None:
    """A watcher, started once it has its first message (it has joined), read to its end."""
    async with open_websocket_url(url) as connection:
        first = json.loads(await connection.get_message())
        task_status.started()
        messages, _ = await receive_all(connection)
        received.append([first, *messages])


async def test_the_writes_go_on_when_the_member_running_them_leaves() -> None:
    with trio.fail_after(GUARD):
        async with serve_app(app_config()) as gateway:
            job_id, requests = await held_job(gateway, 10)
            url = f"{gateway.ws_url}/jobs/{job_id}/ws?tasks=batch"
            leave = trio.Event()

            async def first_member(*, task_status: trio.TaskStatus[None]) -> None:
                async with open_websocket_url(url) as leaving:
                    await leaving.get_message()
                    task_status.started()
                    await leave.wait()

            async with trio.open_nursery() as nursery:
                await nursery.start(first_member)
                async with open_websocket_url(url) as staying:
                    await staying.get_message()
                    await answer(gateway, job_id, requests[:5])
                    # The first member, whose task ran the group's writes, leaves.
                    leave.set()
                    await poll_until(lambda: gateway.job(job_id).feed.watchers == 1)
                    await answer(gateway, job_id, requests[5:])
                    messages, code = await receive_all(staying)
    assert code == 1000
    assert messages[-1]["job"]["status"] == "resolved"
    assert sorted(resolved_ids(messages)) == sorted(request["id"] for request in requests)


async def test_a_stalled_member_is_cut_off_alone_and_the_others_get_everything() -> None:
    send_timeout = 0.5
    config = app_config(http={"send_timeout": send_timeout}, watchers={"queue_size": 1024})
    with trio.fail_after(GUARD):
        async with serve_app(config) as gateway:
            job_id = await heavy_job(gateway, devices=100)
            feed = gateway.job(job_id).feed
            url = f"/jobs/{job_id}/ws?tasks=batch"
            async with (
                never_reading_watcher(gateway, url) as stalled,
                open_websocket_url(gateway.ws_url + url) as reader,
            ):
                await poll_until(lambda: feed.watchers == 2)
                gateway.devices.answer_all()
                messages, code = await receive_all(reader)
                assert code == 1000
                assert len(set(resolved_ids(messages))) == 100
                # The stalled one holds the final message behind what its socket did not
                # take, until http.send_timeout cuts it off.
                await poll_until(lambda: feed.watchers == 0)
                await read_until_closed(stalled)


async def test_the_final_message_and_the_close_frame_go_in_one_write(
    watcher_writes: list[bytes],
) -> None:
    with trio.fail_after(GUARD):
        async with serve_app(app_config()) as gateway:
            job_id, requests = await held_job(gateway, 2)
            received: list[list[dict[str, Any]]] = []
            async with trio.open_nursery() as nursery:
                for _ in range(2):  # two members, written to together
                    await nursery.start(
                        _watch_to_end, f"{gateway.ws_url}/jobs/{job_id}/ws?tasks=none", received
                    )
                gateway.devices.answer_all()
    assert [messages[-1]["job"]["status"] for messages in received] == ["resolved"] * 2
    finals = [data for data in watcher_writes if data.endswith(b"\x88\x02\x03\xe8")]
    assert len(finals) == 2 and finals[0] == finals[1]
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(finals[0])
    final, close = client.events()
    assert isinstance(final, TextMessage) and isinstance(close, CloseConnection)
    assert json.loads(final.data)["job"]["status"] == "resolved" and close.code == 1000


async def test_a_bug_in_the_groups_writes_closes_its_hosts_connection_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fan_out = WatchGroup._fan_out
    failed = False

    async def failing_once(group: WatchGroup, messages: list[bytes]) -> bool:
        nonlocal failed
        if not failed:
            failed = True
            raise RuntimeError("a bug in the group's writes")
        return await fan_out(group, messages)

    monkeypatch.setattr(WatchGroup, "_fan_out", failing_once)
    with trio.fail_after(GUARD):
        async with serve_app(app_config()) as gateway:
            job_id, requests = await held_job(gateway, 2)
            url = f"{gateway.ws_url}/jobs/{job_id}/ws?tasks=none"
            async with open_websocket_url(url) as host, open_websocket_url(url) as other:
                await host.get_message()
                await other.get_message()
                await answer(gateway, job_id, requests[:1])
                _, host_code = await receive_all(host)
                await answer(gateway, job_id, requests[1:])
                messages, other_code = await receive_all(other)
    # The first member's connection ran the writes: it reports the bug; the other goes on.
    assert (host_code, other_code) == (1011, 1000)
    assert messages[-1]["job"]["status"] == "resolved"
