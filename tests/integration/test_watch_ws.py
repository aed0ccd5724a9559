"""WebSocket watchers through the real gateway: embedded broker, simulated devices."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio_websocket

from .conftest import GatewayFactory, SimulatorFactory
from .test_dispatch import entry, post_job, wait_final


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
