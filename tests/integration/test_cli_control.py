"""``pm submit`` with rollout and schedule options, ``--file`` and ``--dry-run``, and
``pm pause|resume|cancel|retry``, as people run them: real subprocesses against a real
gateway (embedded broker, HTTP API) and simulated devices on their own MQTT connections."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.integration.gateways import GatewayFactory, SimulatorFactory, pm

GUARD = 60
START_DELAY = 8.0


async def wait_job(client: httpx.AsyncClient, job_id: str, status: str) -> dict[str, Any]:
    while (job := (await client.get(f"/jobs/{job_id}")).json())["status"] != status:  # noqa: ASYNC110
        await trio.sleep(0.02)
    return job


async def test_submit_file_with_options_then_pause_resume_and_watch_the_outcomes(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any, tmp_path: Path
) -> None:
    with trio.fail_after(GUARD):
        gateway = await start_gateway()
        await start_simulator(gateway, ["a", "b"], latency=0.3)
        await start_simulator(gateway, ["c"], error_rate=1.0, error_code=503)
        client = http(gateway)
        document = {
            "batch": [
                {"method": "put", "resource": "/one", "__destination": ["a", "b", "c"]},
                {"method": "get", "resource": "/two", "__destination": "a", "data": {"k": 1}},
            ]
        }
        path = tmp_path / "job.json"
        path.write_text(json.dumps(document))
        url = ["--url", gateway.http_url]

        planned = await pm("submit", *url, "--file", str(path), "--dry-run", "--max-in-flight", "1")
        assert planned.returncode == 0, planned
        assert "dry run: 4 task(s) to 3 device(s)" in planned.stdout
        assert (await client.get("/jobs")).json() == []

        # Held until startAt: room for the pause, a second pause and the resume (each a `pm`
        # process, well under a second here) before it may send.
        start_at = datetime.fromtimestamp(time.time() + START_DELAY, UTC).isoformat()
        submitted = await pm(
            "submit", *url, "--file", str(path), "--max-in-flight", "1", "--abort-at",
            "90%:error:pause:min=3", "--expires-in", "600", "--start-at", start_at,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted
        job_id = submitted.stdout.strip()
        job = (await client.get(f"/jobs/{job_id}")).json()
        assert job["rollout"]["maxInFlight"] == 1 and job["totalCount"] == 4
        assert job["abort"][0]["thresholdPercent"] == 90.0

        paused = await pm("pause", job_id, *url)
        assert paused.returncode == 0, paused
        assert paused.stdout.startswith(f"job {job_id} paused")
        again = await pm("pause", job_id, *url)
        assert again.returncode == 2 and "409" in again.stderr, again
        resumed = await pm("resume", job_id, *url)
        assert resumed.returncode == 0, resumed
        # Still waiting for its startAt, unless the machine was very slow.
        assert resumed.stdout.startswith(f"job {job_id} "), resumed

        watched = await pm("watch", job_id, *url)
        assert watched.returncode == 1, watched  # one device answered 503
        assert "outcomes (partial): resolved 200×3, error 503×1" in watched.stdout, watched
        assert "abort #0 error ≥ 90% (min 3)" in watched.stdout

        listed = await pm("jobs", *url, "--outcome", "partial")
        assert listed.returncode == 0 and job_id in listed.stdout and "partial" in listed.stdout
        none = await pm("jobs", *url, "--outcome", "failed")
        assert "no failed jobs" in none.stdout

        retried = await pm("retry", job_id, *url)
        assert retried.returncode == 0, retried
        retry_id = retried.stdout.strip()
        assert retry_id.isdigit() and retry_id != job_id
        assert f"retries 1 task(s) of job {job_id}" in retried.stderr
        retry = (await client.get(f"/jobs/{retry_id}", params={"collection": "true"})).json()
        assert [t["__destination"] for t in retry["collection"]] == ["c"]


async def test_cancel_and_a_scheduled_submit_from_the_command_line(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    with trio.fail_after(GUARD):
        gateway = await start_gateway()
        fleet = await start_simulator(gateway, ["a"])
        client = http(gateway)
        url = ["--url", gateway.http_url]
        submitted = await pm(
            "submit", *url, "--resource", "/later", "--to", "a",
            "--start-at", "2099-01-01T00:00:00Z", "--window", "0 2 * * *;60;Europe/Berlin",
        )  # fmt: skip
        assert submitted.returncode == 0, submitted
        job_id = submitted.stdout.strip()
        job = await wait_job(client, job_id, "scheduled")
        assert job["holds"] == ["scheduled"]

        cancelled = await pm("cancel", job_id, *url, "--json")
        assert cancelled.returncode == 0, cancelled
        assert json.loads(cancelled.stdout)["id"] == int(job_id)
        final = await wait_job(client, job_id, "cancelled")
        assert final["outcomes"]["cancelled"] == 1
        assert fleet.received_by("a") == []
        gone = await pm("cancel", job_id, *url)
        assert gone.returncode == 2 and "409" in gone.stderr
        unknown = await pm("resume", "999999", *url)
        assert unknown.returncode == 2 and "404" in unknown.stderr

        bad = await pm("submit", *url, "--resource", "/r", "--to", "a", "--window", "0 2 * * *")
        assert bad.returncode == 2 and "CRON;MINUTES" in bad.stderr
