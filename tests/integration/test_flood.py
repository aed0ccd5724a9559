"""A flood of junk on the answer topics while a job runs (the real gateway, embedded broker and
simulated devices): the job completes exactly as without it, every junk message is dropped and
counted by reason (visible in /healthz and /metrics), and the gateway keeps no state per
message, so its memory stays bounded.

The flood comes from a separate process (paho, QoS 0), so that neither its CPU nor its
memory is counted against the gateway's. The 100k flood goes through mosquitto: the embedded
amqtt broker forwards only a few thousand messages a second, so through it the same test
runs with a smaller flood. ``PM_FLOOD_MESSAGES`` sets the size of both.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.brokers import MosquittoBroker
from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.job_api import assert_consistent, entry, post_job, wait_final
from tests.waiting import poll_until

FLOOD_THROUGH_MOSQUITTO = int(os.environ.get("PM_FLOOD_MESSAGES", "100000"))
FLOOD_THROUGH_AMQTT = int(os.environ.get("PM_FLOOD_MESSAGES", "5000"))
MAX_ANSWER_BYTES = 1024
DEVICES = [f"dev-{n}" for n in range(8)]

# Sent by a child process: argv = host port count device...; prints nothing, exits 0.
# A cycle of 50 junk messages, each drop reason represented; the answers to real devices
# carry ids no task has (task ids start at 1).
_floodER = r"""
import sys
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

host, port, count, devices = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
cycle = []
for n in range(50):
    device = devices[n % len(devices)]
    own = f"/remote/{device}/response"
    ghost = f"/remote/ghost-{n}/response"
    cycle += [
        (own, b"not json at all"),
        (own, b'{"id": "1", "code": 200}'),
        (own, b'{"id": 900000000, "code": 200, "data": {"forged": true}}'),
        (ghost, b'{"id": 1, "code": 200}'),
        ("/remote//response", b'{"id": 1, "code": 200}'),
        (own, b"\xff\xfe\x00garbage"),
        (own, b"[]"),
    ][n % 7 : n % 7 + 1]
oversized = b'{"id": 1, "code": 200, "pad": "' + b"x" * 4096 + b'"}'
cycle[-1] = (f"/remote/{devices[0]}/response", oversized)
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flooder")
client.max_queued_messages_set(0)
client.connect(host, port)
client.loop_start()
last = None
for i in range(count):
    topic, payload = cycle[i % len(cycle)]
    last = client.publish(topic, payload, qos=0)
last.wait_for_publish(60)
client.disconnect()
client.loop_stop()
"""


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _drops_in_metrics(text: str) -> dict[str, float]:
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "pm_dropped_messages_total"
    }


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
async def test_a_flood_of_junk_answers_changes_nothing_but_the_drop_counters(
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: Any,
    request: pytest.FixtureRequest,
    broker: str,
) -> None:
    with trio.fail_after(60):
        limits = {"max_answer_bytes": MAX_ANSWER_BYTES}
        if broker == "mosquitto":
            flood = FLOOD_THROUGH_MOSQUITTO
            mosquitto: MosquittoBroker = request.getfixturevalue("mosquitto")
            gateway = await start_gateway(
                limits=limits,
                broker={"embedded": False},
                mqtt={"host": mosquitto.host, "port": mosquitto.port},
            )
        else:
            flood = FLOOD_THROUGH_AMQTT
            gateway = await start_gateway(limits=limits)
        await start_simulator(gateway, DEVICES, latency=0.05)
        client = http(gateway)
        assert gateway.engine is not None
        fleet = gateway.engine.fleet
        gc.collect()
        objects_before, rss_before = len(gc.get_objects()), _rss_bytes()

        # Twelve rounds per device at 50 ms each: the job runs for the flood's start at least.
        created = await post_job(
            client, *(entry(DEVICES, f"/round/{n}", data={"n": n}) for n in range(12))
        )
        flooder = await trio.lowlevel.open_process(
            [sys.executable, "-c", _floodER, gateway.mqtt_host, str(gateway.mqtt_port)]
            + [str(flood), *DEVICES],
            stdout=subprocess.DEVNULL,
        )
        try:
            job = await wait_final(client, created["id"])
            assert await flooder.wait() == 0
        finally:
            if flooder.returncode is None:
                flooder.kill()
        await poll_until(lambda: sum(fleet.dropped.values()) >= flood)

        # The job is exactly what it would have been without the flood.
        assert job["status"] == "resolved", job["status"]
        assert_consistent(job)
        assert job["finishCount"] == len(DEVICES) * 12
        for task in job["collection"]:
            assert task["__task"]["result"]["resource"] == task["resource"]
            assert "forged" not in str(task["__task"]["result"])

        # Every junk message is counted once, under the reason it deserves.
        dropped = dict(fleet.dropped)
        assert sum(dropped.values()) == flood, dropped
        assert set(dropped) == {"malformed", "unexpected_id", "foreign_topic", "oversized"}
        assert dropped["oversized"] == flood // 50

        # No state per message or per junk device: actors only for real devices, nothing in
        # flight, and no growth of live objects or memory in proportion to the flood.
        assert fleet.live_actors <= len(DEVICES) and fleet.in_flight == 0
        gc.collect()
        objects_grown = len(gc.get_objects()) - objects_before
        rss_grown = _rss_bytes() - rss_before
        # The job itself (its tasks, views, store rows) accounts for a few thousand objects;
        # state kept per junk message would be at least one object per message.
        assert objects_grown < 10_000, objects_grown
        assert rss_grown < 64 * 1024 * 1024, rss_grown

        # Visible from outside.
        health = (await client.get("/healthz")).json()
        assert health["droppedMessages"] == dropped
        metrics = (await client.get("/metrics")).text
        # Reasons that did not happen here are exported as 0.
        assert _drops_in_metrics(metrics) == {"answer_overflow": 0, "bad_status": 0, **dropped}
