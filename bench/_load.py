"""What a benchmark does to the system under test: raw MQTT round trips, and jobs over HTTP.

All of it runs on trio in the benchmark driver process; the gateway and the fleet are other
processes (:mod:`bench._processes`).
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import msgspec
import trio

from pm.mqtt import open_mqtt_client

# Any single measurement longer than this is a hang (a lost message, a dead process).
HANG_GUARD = 900.0
FINAL_STATUSES = frozenset({"resolved", "timeout", "cancelled"})
# Request ids of the raw requester: far above any task id the gateway hands out in a run, so
# the simulator never mistakes one for a re-sent gateway request (it replays answers by id).
_raw_ids = itertools.count(10**12)
_encode = msgspec.json.Encoder().encode
_decode_id = msgspec.json.Decoder(dict[str, Any]).decode


async def raw_round_trips(port: int, devices: list[str], *, window: int) -> float:
    """Sanji requests straight to ``/remote/{device}`` through the broker, no gateway.

    The same MQTT client as the gateway (:mod:`pm.mqtt`, paho driven by trio, QoS 1); answers
    come back on ``/bench/{device}/answer`` (one wildcard subscription, like the gateway's
    ``/remote/+/response``, but a filter the gateway does not hold, so a gateway on the same
    broker stays idle).

    Args:
      port: the broker on 127.0.0.1.
      devices: one request per device, in this order.
      window: requests outstanding at once; 1 is sequential, ``len(devices)`` a full burst.

    Returns:
      Round trips per second, first publish to last answer.
    """
    outstanding = trio.Semaphore(window)
    remaining = len(devices)
    done = trio.Event()

    def on_answer(topic: str, payload: bytes) -> None:
        nonlocal remaining
        remaining -= 1
        outstanding.release()
        if remaining == 0:
            done.set()

    with trio.fail_after(HANG_GUARD):
        async with open_mqtt_client(
            "127.0.0.1",
            port,
            client_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
            on_message=on_answer,
            max_inflight=max(window, 20),
        ) as client:
            await client.subscribe("/bench/+/answer", 1)
            started = time.perf_counter()
            for device in devices:
                await outstanding.acquire()
                request = {
                    "id": next(_raw_ids),
                    "method": "get",
                    "resource": "/bench",
                    "data": {},
                    "tunnel": f"/bench/{device}/answer",
                }
                if not client.publish(f"/remote/{device}", _encode(request), 1):
                    raise RuntimeError("raw requester lost its connection")
            await done.wait()
            return len(devices) / (time.perf_counter() - started)


def job_body(devices: list[str], entries: int = 1, timeout: float = 600.0) -> bytes:
    """``entries`` commands, each to every device: ``entries * len(devices)`` tasks."""
    return _encode(
        {
            "timeout": timeout,
            "batch": [
                {"method": "get", "resource": f"/bench/{n}", "data": {}, "__destination": devices}
                for n in range(entries)
            ],
        }
    )


def parse_time(stamp: str) -> float:
    """A job timestamp (``2011-12-19T15:28:46.493Z``) as seconds since the epoch."""
    return datetime.fromisoformat(stamp).timestamp()


class JobRun(msgspec.Struct):
    job_id: int
    tasks: int
    seconds: float  # POST sent -> the job's finishAt (same machine, same clock)
    status: str
    errors: int

    @property
    def tasks_per_second(self) -> float:
        return self.tasks / self.seconds


async def post_job(client: httpx.AsyncClient, body: bytes) -> tuple[int, float]:
    """POST /jobs; returns the job id and the wall-clock time just before sending."""
    sent = time.time()
    response = await client.post(
        "/jobs", content=body, headers={"content-type": "application/json"}
    )
    response.raise_for_status()
    return int(response.json()["id"]), sent


async def wait_final(
    client: httpx.AsyncClient, job_id: int, *, poll: float = 0.05
) -> dict[str, Any]:
    """Poll GET /jobs/{id} until its status is final; returns the job."""
    with trio.fail_after(HANG_GUARD):
        while True:
            response = await client.get(f"/jobs/{job_id}")
            response.raise_for_status()
            job: dict[str, Any] = response.json()
            if job["status"] in FINAL_STATUSES:
                return job
            await trio.sleep(poll)


async def run_job(
    client: httpx.AsyncClient, devices: list[str], entries: int = 1, *, poll: float = 0.05
) -> JobRun:
    """One job of ``entries * len(devices)`` tasks, POST to final status.

    The duration ends at the job's own ``finishAt`` (millisecond stamp, same clock), so the
    polling interval does not add to it.
    """
    job_id, sent = await post_job(client, job_body(devices, entries))
    job = await wait_final(client, job_id, poll=poll)
    seconds = max(parse_time(job["finishAt"]) - sent, 1e-3)
    return JobRun(job_id, job["totalCount"], seconds, job["status"], job["errorCount"])


def http_client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120.0))


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.99 for p99)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
