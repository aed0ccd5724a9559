"""A fuzz target for device answers through the real path: generated hostile answers (deep,
wide, invalid UTF-8, wrong types, random bytes), all carrying the id of the task in flight,
are published by a real MQTT client through the embedded broker to a running gateway.

Every one must be dropped and counted (``/healthz`` ``droppedMessages``), none may settle the
task or log a traceback, and the same gateway must then settle the task on a normal answer.
``PM_FUZZ_EXAMPLES`` raises the number of generated answers.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pm.mqtt import open_mqtt_client
from tests.hostile_json import deep_json, json_values, wide_json
from tests.integration.gateways import GatewayFactory

EXAMPLES = int(os.environ.get("PM_FUZZ_EXAMPLES", "150"))
DEVICE = "fuzz-device"
# The embedded amqtt broker forwards a few hundred messages a second: ample margin.
GUARD = 30.0


def hostile_answers(task_id: int) -> st.SearchStrategy[bytes]:
    """Answers to ``task_id`` that must not settle it, whatever the gateway's parser does."""
    prefix = b'{"id": %d, "code": 200, ' % task_id
    return st.one_of(
        # Nested beyond limits.max_json_depth (64, and the answer's own object is one more).
        deep_json(min_levels=64).map(lambda data: prefix + b'"data": ' + data + b"}"),
        # Invalid UTF-8 in a string value, or in a key of data. (In a key the gateway does
        # not read, it is skipped unread, as msgspec skips unknown fields: that answer is
        # valid and would settle the task, harmlessly, so it is not generated here.)
        invalid_utf8.map(lambda raw: prefix + b'"data": "' + raw + b'"}'),
        invalid_utf8.map(lambda raw: prefix + b'"resource": "/' + raw + b'"}'),
        invalid_utf8.map(lambda raw: prefix + b'"data": {"' + raw + b'": 1}}'),
        # The right id with a wrong type somewhere.
        st.sampled_from(
            [
                b'{"id": "%d", "code": 200}' % task_id,
                b'{"id": %d, "code": "200"}' % task_id,
                b'{"id": %d.5, "code": 200}' % task_id,
                b'{"id": %d, "code": 200, "sign": "x"}' % task_id,
                b'{"id": %d, "code": 1e400}' % task_id,
            ]
        ),
        # Wide data under the wrong shape: a list at the top.
        wide_json.map(lambda data: b"[" + data + b"]"),
        # Any JSON value that is not an object, and random bytes.
        json_values.filter(lambda value: not isinstance(value, dict)).map(
            lambda value: json.dumps(value).encode()
        ),
        st.binary(max_size=300).filter(lambda raw: not raw.lstrip().startswith(b"{")),
    )


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


# Bytes that are not UTF-8 and hold no quote or backslash (they stay inside their string).
invalid_utf8 = (
    st.binary(min_size=1, max_size=6)
    .map(lambda raw: raw.replace(b'"', b"").replace(b"\\", b""))
    .filter(lambda raw: not _is_utf8(raw))
)


async def gateway_job_resolved(client: Any, job_id: int) -> None:
    # The job's state is the gateway's, read over HTTP: nothing to wait on but it.
    while (await client.get(f"/jobs/{job_id}")).json()["status"] != "resolved":  # noqa: ASYNC110
        await trio.sleep(0.02)


def generate(strategy: st.SearchStrategy[bytes], count: int) -> list[bytes]:
    """``count`` examples of ``strategy``, reproducibly (hypothesis drives the choice)."""
    examples: list[bytes] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: bytes) -> None:
        examples.append(example)

    collect()
    return examples


async def test_hostile_answers_are_dropped_counted_and_never_settle_a_task(
    start_gateway: GatewayFactory, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with trio.fail_after(GUARD):
        gateway = await start_gateway(tasks={"default_timeout": GUARD})
        client = http(gateway)
        requests_send, requests_receive = trio.open_memory_channel[bytes](math.inf)

        def on_request(topic: str, payload: bytes) -> None:
            requests_send.send_nowait(payload)

        async with open_mqtt_client(
            gateway.mqtt_host, gateway.mqtt_port, client_id="fuzzing-device", on_message=on_request
        ) as device:
            await device.subscribe(f"/remote/{DEVICE}")
            created = await client.post(
                "/jobs",
                json={"batch": [{"method": "get", "resource": "/a", "__destination": DEVICE}]},
            )
            assert created.status_code == 200, created.text
            job_id = created.json()["id"]
            request = json.loads(await requests_receive.receive())

            answers = generate(hostile_answers(request["id"]), EXAMPLES)
            assert len(answers) >= EXAMPLES // 2  # hypothesis may stop early on a small space
            for answer in answers:
                assert device.publish(request["tunnel"], answer)

            async def dropped() -> dict[str, int]:
                health = (await client.get("/healthz")).json()
                return health["droppedMessages"]

            counts: dict[str, int] = {}
            while sum(counts.values()) < len(answers):  # noqa: ASYNC110
                # The counts are the gateway's, read over HTTP: nothing to wait on but them.
                counts = await dropped()
                await trio.sleep(0.05)
            assert sum(counts.values()) == len(answers), counts
            assert set(counts) <= {"malformed", "oversized"}, counts
            job = (await client.get(f"/jobs/{job_id}")).json()
            assert job["status"] == "dispatching" and job["doneCount"] == 0

            # The same gateway still settles the task on a normal answer.
            good = {"id": request["id"], "code": 200, "data": {"ok": True}}
            assert device.publish(request["tunnel"], json.dumps(good).encode())
            await gateway_job_resolved(client, job_id)
            assert sum((await dropped()).values()) == len(answers)

    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
