"""``pm watch``'s pure part: how watch messages, batched or not, become its progress."""

from __future__ import annotations

import io

import msgspec
from rich.console import Console

from pm.cli._job_progress import JobProgress
from pm.cli._watch import LiveDisplay, websocket_url
from pm.schemas import JobView, WatchMessage

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


def job_view(total: int, done: int, progress: int) -> JobView:
    return JobView(
        id=1,
        created_at="2026-01-01T00:00:00.000Z",
        finish_at=None,
        timeout=None,
        status="dispatching",
        progress=progress,
        total_count=total,
        done_count=done,
        finish_count=done,
        error_count=0,
        pending_count=0,
        sent_count=total - done,
        expired_count=0,
    )


def test_the_progress_bar_follows_progress_answers_not_only_settled_tasks() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    display = LiveDisplay(console, 1)
    progress = JobProgress(1)
    try:
        # Four tasks, none settled, each at 50 % by its 206 answers: the job is at 50 %.
        progress.job = job_view(total=4, done=0, progress=50)
        display.update(progress)
        assert display.bar.tasks[0].completed == 2.0
        # Settled tasks count whole even when the mean rounds down.
        progress.job = job_view(total=3, done=1, progress=33)
        display.update(progress)
        assert display.bar.tasks[0].completed == 1.0
    finally:
        display.close()
