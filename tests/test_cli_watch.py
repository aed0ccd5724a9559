"""``pm watch``'s pure part: how watch messages, batched or not, become its progress."""

from __future__ import annotations

import msgspec

from pm.cli._job_progress import JobProgress
from pm.cli._watch import websocket_url
from pm.schemas import WatchMessage

_decode = msgspec.json.Decoder(WatchMessage).decode


def task(task_id: int, status: str) -> dict:
    return {
        "id": task_id,
        "method": "get",
        "resource": "/r",
        "tunnel": f"/remote/d{task_id}/response",
        "data": None,
        "__destination": f"d{task_id}",
        "__task": {
            "createdAt": "2026-01-01T00:00:00.000Z",
            "finishAt": None,
            "timeout": 30.0,
            "status": status,
            "progress": 0,
            "result": None,
        },
    }


def test_failed_tasks_are_collected_from_task_and_tasks_messages() -> None:
    progress = JobProgress(1)
    progress.apply(_decode(msgspec.json.encode({"type": "task", "task": task(1, "error")})))
    batch = {"type": "tasks", "tasks": [task(2, "sent"), task(3, "timeout"), task(2, "resolved")]}
    progress.apply(_decode(msgspec.json.encode(batch)))
    assert sorted(progress.failed) == [1, 3]


def test_pm_watch_asks_for_batched_task_changes() -> None:
    assert websocket_url("http://gw:8080/", 7) == "ws://gw:8080/jobs/7/ws?tasks=batch"
    assert websocket_url("https://gw", 7) == "wss://gw/jobs/7/ws?tasks=batch"
