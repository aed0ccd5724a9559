"""The benchmark's lean watchers (bench/_lean_watcher.py, bench/_watcher_fleet.py): the frame
walking against frames made by wsproto (an independent encoder), fed in every split, and
whole watches of a real server's job."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, TextMessage

from bench._lean_watcher import FrameWalker, LeanWatcherError, watch
from bench._watcher_fleet import watch_all
from tests.job_api import entry
from tests.served_app import app_config, serve_app
from tests.waiting import poll_until

GUARD = 30.0


def server_frames() -> tuple[bytes, list[bytes]]:
    server = Connection(ConnectionType.SERVER)
    jobs = [b'{"type":"job","job":{"status":"dispatching"}}', b'{"type":"job","job":{}}']
    messages = [
        jobs[0].decode(),
        '{"type":"task","task":{"id":1}}',
        '{"type":"tasks","tasks":[' + ",".join(['{"id":2}'] * 20_000) + "]}",  # 64-bit length
        "{}",
        "x" * 300,  # 16-bit length
        jobs[1].decode(),
    ]
    data = b"".join(server.send(TextMessage(data=message)) for message in messages)
    return data + server.send(CloseConnection(code=1000)), jobs


@pytest.mark.parametrize("piece", [1, 7, 125, 4096, 1 << 20])
def test_frames_are_walked_in_any_split(piece: int) -> None:
    data, jobs = server_frames()
    walker = FrameWalker()
    for start in range(0, len(data), piece):
        walker.feed(data[start : start + piece])
    assert walker.jobs == jobs
    assert walker.messages == 6
    assert walker.close == b"\x03\xe8"


def test_a_masked_frame_is_refused() -> None:
    client = Connection(ConnectionType.CLIENT)
    with pytest.raises(LeanWatcherError):
        FrameWalker().feed(client.send(TextMessage(data="{}")))


async def test_a_lean_watcher_sees_the_final_status_of_a_real_job() -> None:
    seen: list[tuple[str | None, int]] = []
    with trio.fail_after(GUARD):
        async with serve_app(app_config()) as gateway:
            gateway.devices.auto_answer = False
            job = await gateway.submit(entry(["a", "b"]))
            url = f"{gateway.ws_url}/jobs/{job['id']}/ws?tasks=each"
            async with trio.open_nursery() as nursery:
                connected = trio.Event()

                async def watcher() -> None:
                    seen.append(await watch(url, connected.set))

                nursery.start_soon(watcher)
                await connected.wait()
                gateway.devices.answer_all()
    # The first snapshot, the two task messages, the final snapshot at least.
    assert seen[0][0] == "resolved" and seen[0][1] >= 4


async def test_the_watcher_process_loop_sees_the_final_status_of_real_jobs() -> None:
    with trio.fail_after(GUARD):
        async with serve_app(app_config()) as gateway:
            gateway.devices.auto_answer = False
            job = await gateway.submit(entry(["a", "b"]))
            url = f"{gateway.ws_url}/jobs/{job['id']}/ws?tasks=batch"
            refused = f"{gateway.ws_url}/jobs/424242/ws"
            async with trio.open_nursery() as nursery:
                results: list[dict[str, Any]] = []

                async def watchers() -> None:
                    # More watchers than handshakes at once: the rest wait their turn.
                    urls = [url] * 5 + [refused]
                    results.append(await trio.to_thread.run_sync(watch_all, urls, 2))

                nursery.start_soon(watchers)
                await poll_until(lambda: gateway.job(job["id"]).feed.watchers == 5)
                gateway.devices.answer_all()
    (result,) = results
    assert result["statuses"] == ["resolved"] * 5 + [None]
    assert all(received >= 3 for received in result["messages"][:5])
    assert len(result["errors"]) == 1 and "404" in result["errors"][0]
