"""Jobs through the REST API, shared by the engine and app tests (fake devices) and the
integration tests (the whole gateway): batch entries, a job's decoded request, raw and invalid
bodies with the field each must name, and posting a job and reading it back until it is
final."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import trio

from pm.schemas import JobRequest

# What a raw body must declare (httpx sets it itself for json=; the API refuses others: 415).
JSON_BODY = {"content-type": "application/json"}


def entry(
    devices: str | list[str] = "dev-1", resource: str = "/system/status", **fields: Any
) -> dict[str, Any]:
    """One batch entry: a GET of ``resource`` on ``devices``, ``fields`` merged over it."""
    return {"method": "get", "resource": resource, "__destination": devices, **fields}


def job_request(
    *entries: dict[str, Any],
    timeout: float | None = None,
    expires_in: float | None = None,
    **options: Any,
) -> JobRequest:
    """The decoded body of a job with these batch entries, as the engine receives it;
    ``options`` are more top-level fields, spelled as on the wire (``rollout``, ``retry``...)."""
    body: dict[str, Any] = {"batch": list(entries), **options}
    if timeout is not None:
        body["timeout"] = timeout
    if expires_in is not None:
        body["expiresIn"] = expires_in
    return msgspec.convert(body, JobRequest)


def job_body_with_data(data: bytes) -> bytes:
    """A raw one-task job body whose data is ``{"x": data}``: data sits 4 levels deep."""
    return (
        b'{"batch": [{"method": "get", "resource": "/a", "__destination": "d", "data": {"x": '
        + data
        + b"}}]}"
    )


def _body(**overrides: Any) -> dict[str, Any]:
    return {"batch": [entry(**overrides)]}


# (body, a substring the message must contain: msgspec names the field)
INVALID_BODIES: list[tuple[Any, str]] = [
    ({}, "missing required field `batch`"),
    ({"batch": []}, "length >= 1 - at `$.batch`"),
    ({"batch": {}}, "at `$.batch`"),
    ([], "Expected `object`, got `array`"),
    (_body(method="patch"), "at `$.batch[0].method`"),
    ({"batch": [{"resource": "/a", "__destination": "d"}]}, "missing required field `method`"),
    (_body(resource="system/status"), "at `$.batch[0].resource`"),
    (_body(resource=7), "at `$.batch[0].resource`"),
    (_body(data=[1, 2]), "at `$.batch[0].data`"),
    (_body(data="x"), "at `$.batch[0].data`"),
    ({"batch": [{"method": "get", "resource": "/a"}]}, "missing required field `__destination`"),
    (_body(devices=""), "at `$.batch[0].__destination`"),
    (_body(devices=[]), "at `$.batch[0].__destination`"),
    (_body(devices=["ok", ""]), "at `$.batch[0].__destination[1]`"),
    (_body(devices=["a b"]), "invalid device id 'a b'"),
    (_body(devices=["x/y"]), "invalid device id 'x/y'"),
    (_body(devices=["d", "d"]), "listed more than once"),
    (_body(devices=["00-0C-29-1C-E8-01", "000c291ce801"]), "listed more than once"),
    (_body(devices=[3]), "at `$.batch[0].__destination"),
    (_body(timeout=0), "at `$.batch[0].timeout`"),
    (_body(timeout=-1.5), "at `$.batch[0].timeout`"),
    (_body(timeout="soon"), "at `$.batch[0].timeout`"),
    ({"batch": [entry()], "timeout": 0}, "> 0.0 - at `$.timeout`"),
    ({"batch": [entry()], "timeout": -3}, "at `$.timeout`"),
    (_body(expiresIn=0), "> 0.0 - at `$.batch[0].expiresIn`"),
    (_body(expiresIn="later"), "at `$.batch[0].expiresIn`"),
    ({"batch": [entry()], "expiresIn": -1}, "> 0.0 - at `$.expiresIn`"),
    # Beyond what an ISO 8601 expiresAt can show: every view of the task was a 500.
    (_body(expiresIn=1e12), "<= 315360000.0 - at `$.batch[0].expiresIn`"),
    ({"batch": [entry()], "expiresIn": 1e12}, "<= 315360000.0 - at `$.expiresIn`"),
    ({"batch": [entry()], "urgency": 1}, "unknown field `urgency`"),
    # Rollout options: each refusal names its field.
    ({"batch": [entry()], "rollout": {"maxInFlight": 0}}, "at `$.rollout.maxInFlight`"),
    ({"batch": [entry()], "rollout": {"maxPerMinute": -1}}, "at `$.rollout.maxPerMinute`"),
    ({"batch": [entry()], "rollout": {"window": 5}}, "unknown field `window` - at `$.rollout`"),
    (
        {
            "batch": [entry()],
            "rollout": {"ramp": {"factor": 2, "afterSucceeded": 5, "maxInFlight": 9}},
        },
        "rollout.ramp needs rollout.maxInFlight",
    ),
    (
        {
            "batch": [entry()],
            "rollout": {
                "maxInFlight": 5,
                "ramp": {"factor": 1, "afterSucceeded": 5, "maxInFlight": 9},
            },
        },
        "at `$.rollout.ramp.factor`",
    ),
    ({"batch": [entry()], "abort": [{"on": "late", "thresholdPercent": 5}]}, "at `$.abort[0].on`"),
    (
        {"batch": [entry()], "abort": [{"on": "error", "thresholdPercent": 0}]},
        "at `$.abort[0].thresholdPercent`",
    ),
    (
        {"batch": [entry()], "abort": [{"on": "error", "thresholdPercent": 5, "action": "stop"}]},
        "at `$.abort[0].action`",
    ),
    ({"batch": [entry()], "retry": {"max": 11}}, "at `$.retry.max`"),
    ({"batch": [entry()], "retry": {"jitter": 1.5}}, "at `$.retry.jitter`"),
    ({"batch": [entry()], "retry": {"on": ["expired"]}}, "at `$.retry.on[0]`"),
    ({"batch": [entry()], "priority": "urgent"}, "at `$.priority`"),
    (_body(colour="red"), "unknown field `colour` - at `$.batch[0]`"),
]


def assert_json_error(response: httpx.Response, status: int) -> str:
    """Check ``response`` is our JSON error body with ``status``; return its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["message"] and isinstance(body["message"], str) and body["message"]
    return body["message"]


async def post_job(client: httpx.AsyncClient, *entries: dict, **body: Any) -> dict[str, Any]:
    response = await client.post("/jobs", json={"batch": list(entries), **body})
    assert response.status_code == 200, response.text
    return response.json()


async def wait_final(client: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
    """Poll until the job is final; returns it with full tasks. Callers bound it with their
    test's hang guard."""
    while True:
        response = await client.get(f"/jobs/{job_id}", params={"collection": "true"})
        job = response.json()
        if job["finishAt"] is not None:
            return job
        await trio.sleep(0.02)


def assert_consistent(job: dict[str, Any]) -> None:
    """Every task of a final job is final, and the job's counters add up to its tasks."""
    statuses = [task["__task"]["status"] for task in job["collection"]]
    assert all(s in {"resolved", "error", "timeout", "cancelled", "expired"} for s in statuses), (
        statuses
    )
    assert job["finishCount"] == statuses.count("resolved")
    assert job["errorCount"] == len(statuses) - statuses.count("resolved")
    assert job["doneCount"] == job["totalCount"] == len(statuses)
