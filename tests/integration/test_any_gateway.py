"""Any gateway answers for any job (issue 16): two gateways on one PostgreSQL database, a job
posted to and run by one of them, read, controlled and watched through the other. Real
gateways (embedded broker, engine, HTTP server), real simulated devices, a real PostgreSQL.

Both gateways run with ``cluster.enabled = false`` (the cluster's start is still refused):
the second starts before the job exists, so it never resumes it; everything it knows of the
job comes from the database.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio
import trio_websocket

from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.job_api import entry, post_job, wait_final
from tests.waiting import poll_until

_GUARD = 30.0


def ws_url(http_url: str, job_id: int, query: str) -> str:
    return http_url.replace("http://", "ws://") + f"/jobs/{job_id}/ws?{query}"


async def watch(url: str, into: list[dict[str, Any]], closed: list[int]) -> None:
    """Read every message of one watcher into ``into``; its close code into ``closed``."""
    async with trio_websocket.open_websocket_url(url) as connection:
        try:
            while True:
                into.append(json.loads(await connection.get_message()))
        except trio_websocket.ConnectionClosed as error:
            closed.append(error.reason.code)


async def test_a_job_run_by_one_gateway_is_read_and_watched_through_another(
    migrated_postgres_url: str,
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: Any,
) -> None:
    store = {"url": migrated_postgres_url, "commit_interval": 0.05}
    with trio.fail_after(_GUARD):
        runner = await start_gateway(store=store, tasks={"default_timeout": 20})
        reader = await start_gateway(store=store)
        await start_simulator(runner, ["fast-1", "fast-2"])
        posted_to: httpx.AsyncClient = http(runner)
        other: httpx.AsyncClient = http(reader)
        # "late" has no device yet: its request waits for it, so the job stays running
        # until the test lets it finish (no timing involved).
        job_id = (await post_job(posted_to, entry(["fast-1", "fast-2", "late"])))["id"]

        # The other gateway reads it from the database: a 404 until the runner's first
        # commit (within store.commit_interval), then the progress the runner committed.
        async def progress() -> dict[str, Any]:
            return (await other.get(f"/jobs/{job_id}")).json()

        job = await progress()
        while "status" not in job:
            job = await progress()
        # Watchers on the gateway that does not run the job: every task message, and
        # snapshots only.
        each: list[dict[str, Any]] = []
        snapshots: list[dict[str, Any]] = []
        closes: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, ws_url(reader.http_url, job_id, "tasks=each"), each, closes)
            nursery.start_soon(
                watch, ws_url(reader.http_url, job_id, "tasks=none"), snapshots, closes
            )
            while job["finishCount"] < 2:
                job = await progress()
            running = (await posted_to.get(f"/jobs/{job_id}")).json()
            assert job["status"] == running["status"] == "dispatching"
            assert job["totalCount"] == 3
            tasks = await other.get(f"/jobs/{job_id}/tasks", params={"status": "resolved"})
            assert sorted(task["__destination"] for task in tasks.json()) == ["fast-1", "fast-2"]
            listed = (await other.get("/jobs")).json()
            assert [listed_job["id"] for listed_job in listed] == [job_id]
            assert listed[0]["status"] == "dispatching"

            # Control belongs to the gateway that runs the job: a clear 409 here, and the
            # job is untouched (a DELETE used to remove the rows of a running job).
            for action in ("pause", "resume", "cancel"):
                refused = await other.post(f"/jobs/{job_id}/{action}", json={})
                assert refused.status_code == 409, refused.text
                assert "another gateway" in refused.json()["message"]
            refused = await other.delete(f"/jobs/{job_id}")
            assert refused.status_code == 409 and "another gateway" in refused.json()["message"]
            assert (await posted_to.get(f"/jobs/{job_id}")).json()["status"] == "dispatching"
            # The watchers see the job running (their first look may still find the row the
            # runner committed at creation, "pending", before its first sends were committed).
            await poll_until(
                lambda: (
                    len(each) >= 1
                    and any(message["job"]["status"] == "dispatching" for message in snapshots)
                )
            )
            assert all(
                message["job"]["status"] in ("pending", "dispatching") for message in snapshots
            )

            # The device appears; the runner finishes the job; both watchers get the end.
            await start_simulator(runner, ["late"])
            final = await wait_final(posted_to, job_id)
            assert final["status"] == "resolved" and final["finishCount"] == 3
        assert closes == [1000, 1000]
        for messages in (each, snapshots):
            last = messages[-1]
            assert last["type"] == "job" and last["job"]["status"] == "resolved"
            assert last["job"]["finishCount"] == 3
        # The task messages of the watcher that asked for them end with "late" resolved,
        # as a local watcher's would.
        late = [
            m["task"] for m in each if m["type"] == "task" and m["task"]["__destination"] == "late"
        ]
        assert late and late[-1]["__task"]["status"] == "resolved"
        assert all(message["type"] == "job" for message in snapshots)
        assert (await progress())["status"] == "resolved"
