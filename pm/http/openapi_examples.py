"""Example bodies of ``POST /jobs`` for the OpenAPI document: the seed's plain job, and one per
rollout, expiry and schedule option. Tests decode each one as a
:class:`~pm.schemas.JobRequest`."""

from __future__ import annotations

from typing import Any

_BATCH = [{"method": "put", "resource": "/system/firmware", "__destination": ["dev-1", "dev-2"]}]

JOB_REQUEST_EXAMPLES: dict[str, dict[str, Any]] = {
    "plain": {
        "summary": "Every task sent at once (the seed's behaviour)",
        "value": {"batch": _BATCH},
    },
    "rollout": {
        "summary": "At most 50 in flight, 600 a minute, doubling every 100 resolved up to 500",
        "value": {
            "batch": _BATCH,
            "rollout": {
                "maxInFlight": 50,
                "maxPerMinute": 600,
                "ramp": {"factor": 2, "afterSucceeded": 100, "maxInFlight": 500},
            },
        },
    },
    "abort": {
        "summary": "Abort once 5% of at least 100 outcomes are errors; pause at 2% timeouts",
        "value": {
            "batch": _BATCH,
            "abort": [
                {"on": "error", "thresholdPercent": 5, "minSettled": 100, "action": "cancel"},
                {"on": "timeout", "thresholdPercent": 2, "minSettled": 50, "action": "pause"},
            ],
        },
    },
    "retry": {
        "summary": "Retry 503 and 504 errors up to 3 times: 5 s, 10 s, 20 s, minus 20% jitter",
        "value": {
            "batch": _BATCH,
            "retry": {
                "on": ["error"],
                "codes": [503, 504],
                "max": 3,
                "delay": 5,
                "factor": 2,
                "maxDelay": 300,
                "jitter": 0.2,
            },
        },
    },
    "priority": {
        "summary": "Ahead of normal jobs' tasks waiting for the same devices",
        "value": {"batch": _BATCH, "priority": "high"},
    },
    "expiresIn": {
        "summary": "Tasks not sent within an hour of the job's creation end expired",
        "value": {"batch": _BATCH, "expiresIn": 3600},
    },
    "schedule": {
        "summary": "Only from 02:00 to 04:00 Berlin time, from Dec 1 until Dec 8, then cancel",
        "value": {
            "batch": _BATCH,
            "schedule": {
                "startAt": "2026-12-01T00:00:00Z",
                "endAt": "2026-12-08T00:00:00Z",
                "endBehavior": "cancel",
                "windows": [
                    {"cron": "0 2 * * *", "durationMinutes": 120, "timezone": "Europe/Berlin"}
                ],
            },
        },
    },
}
