"""WebSocket watchers through the real gateway: embedded broker, simulated devices."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio_websocket

from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.job_api import entry, post_job, wait_final


def ws_url(http_url: str, job_id: int) -> str:
    return http_url.replace("http://", "ws://") + f"/jobs/{job_id}/ws"


async def read_until_closed(connection: trio_websocket.WebSocketConnection) -> list[dict]:
    messages = []
    try:
        while True:
            messages.append(json.loads(await connection.get_message()))
    except trio_websocket.ConnectionClosed:
        return messages


async def test_watch_message_order_and_final_close(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        devices = [f"w{i}" for i in range(5)]
        await start_simulator(gateway, devices, latency=0.2, progress_steps=1)
        created = await post_job(http(gateway), entry(devices, "/a"), entry(devices, "/b"))
        async with trio_websocket.open_websocket_url(
            ws_url(gateway.http_url, created["id"])
        ) as connection:
            messages = await read_until_closed(connection)
            assert connection.closed is not None and connection.closed.code == 1000
        assert messages[0]["type"] == "job" and "collection" not in messages[0]["job"]
        final = messages[-1]
        assert final["type"] == "job" and final["job"]["status"] == "resolved"
        assert final["job"]["doneCount"] == final["job"]["finishCount"] == 10
        task_messages = [m["task"] for m in messages if m["type"] == "task"]
        settled = {t["id"] for t in task_messages if t["__task"]["status"] == "resolved"}
        assert settled == set(created["collection"])
        # Per task, states only move forward: sent (with progress) before resolved.
        for task_id in created["collection"]:
            states = [t["__task"]["status"] for t in task_messages if t["id"] == task_id]
            assert states[-1] == "resolved" and set(states[:-1]) <= {"sent"}, states
        assert any(t["__task"]["progress"] == 50 for t in task_messages)
        # A job already final at connect: one snapshot, then a normal close.
        async with trio_websocket.open_websocket_url(
            ws_url(gateway.http_url, created["id"])
        ) as connection:
            again = await read_until_closed(connection)
        assert again == [final]


async def test_watcher_that_never_reads_does_not_hold_the_job(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(60):
        gateway = await start_gateway(watchers={"queue_size": 64})
        devices = [f"s{i}" for i in range(100)]
        await start_simulator(gateway, devices, connections=4)
        client = http(gateway)
        # ~4 KiB per task message, two per task: far more than the socket buffers hold.
        bulky = {"blob": "x" * 4000}
        body = [entry(devices, f"/r/{i}", data=bulky) for i in range(10)]
        created = await post_job(client, *body)
        async with trio_websocket.open_websocket_url(
            ws_url(gateway.http_url, created["id"]), message_queue_size=0
        ) as stalled:
            # Not reading from `stalled` while the whole job runs.
            job = await wait_final(client, created["id"])
            assert job["status"] == "resolved" and job["finishCount"] == 1000
            messages = await read_until_closed(stalled)
        assert messages[-1]["type"] == "job" and messages[-1]["job"]["status"] == "resolved"
        task_messages = sum(m["type"] == "task" for m in messages)
        assert task_messages < 2000, "a stalled watcher must lose task messages, not buffer them"


async def test_watch_unknown_job_is_refused(start_gateway: GatewayFactory) -> None:
    with trio.fail_after(20):
        gateway = await start_gateway()
        try:
            async with trio_websocket.open_websocket_url(ws_url(gateway.http_url, 424242)):
                raise AssertionError("the handshake should have been refused")
        except trio_websocket.HandshakeError as error:
            assert isinstance(error, trio_websocket.ConnectionRejected)
            assert error.status_code == 404


async def test_watch_batched_tasks_and_snapshots_only(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        devices = [f"b{i}" for i in range(5)]
        await start_simulator(gateway, devices, latency=0.2, progress_steps=1)
        created = await post_job(http(gateway), entry(devices, "/a"), entry(devices, "/b"))
        url = ws_url(gateway.http_url, created["id"])
        async with (
            trio_websocket.open_websocket_url(url + "?tasks=batch") as batched,
            trio_websocket.open_websocket_url(url + "?tasks=none") as counts_only,
        ):
            batch_messages = await read_until_closed(batched)
            count_messages = await read_until_closed(counts_only)
            assert batched.closed is not None and batched.closed.code == 1000
            assert counts_only.closed is not None and counts_only.closed.code == 1000
        # batch: the same protocol, with task changes in {"type": "tasks"} messages.
        assert batch_messages[0]["type"] == "job"
        assert batch_messages[-1]["type"] == "job"
        assert batch_messages[-1]["job"]["status"] == "resolved"
        assert {m["type"] for m in batch_messages} == {"job", "tasks"}
        tasks = [t for m in batch_messages if m["type"] == "tasks" for t in m["tasks"]]
        assert {t["id"] for t in tasks if t["__task"]["status"] == "resolved"} == set(
            created["collection"]
        )
        # Ten tasks, each sent, at 50 % and resolved: far fewer messages than changes.
        assert sum(m["type"] == "tasks" for m in batch_messages) < len(tasks)
        # none: job snapshots only, the final one last.
        assert {m["type"] for m in count_messages} == {"job"}
        assert count_messages[-1] == batch_messages[-1]


async def test_watch_unknown_task_mode_is_refused(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(20):
        gateway = await start_gateway()
        await start_simulator(gateway, ["u0"])
        created = await post_job(http(gateway), entry(["u0"], "/a"))
        try:
            async with trio_websocket.open_websocket_url(
                ws_url(gateway.http_url, created["id"]) + "?tasks=all"
            ):
                raise AssertionError("the handshake should have been refused")
        except trio_websocket.ConnectionRejected as error:
            assert error.status_code == 400
            assert b"each, batch, none" in (error.body or b"")
