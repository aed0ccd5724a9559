"""The chaos soak of ``bench/chaos.py``, short: one job through broker SIGKILLs and one gateway
SIGKILL, checked from the outside.

Real processes (``pm serve`` with its embedded amqtt child, or an external mosquitto;
``pm simulate`` with one MQTT connection per device), so real time: each run takes 10-20 s
on a quiet machine.
The driver's own deadline is the hang guard (a blocking driver cannot be cancelled by trio),
and it stops every process it started, whatever happens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench._chaos import ChaosSettings, run

DEVICES = 100
TASKS_PER_DEVICE = 10
# Each device answers after this long, so the job lasts at least 10 x 0.5 s: long enough for
# the faults below to land while it runs (and a device is busy long enough for an overlap to
# be seen).
LATENCY = 0.5


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_every_task_settles_once_through_broker_and_gateway_kills(
    broker: str, tmp_path: Path
) -> None:
    settings = ChaosSettings(
        devices=DEVICES,
        entries=TASKS_PER_DEVICE,
        broker=broker,
        kill_broker_every=1.5,
        # Then the job must finish: under a loaded machine, endless kills (with the embedded
        # broker's restart delay growing to 5 s) could hold it past any deadline.
        max_broker_kills=3,
        kill_gateway_at=2.5,
        latency=LATENCY,
        # A task that times out was lost: far longer than any re-send takes.
        task_timeout=60.0,
        # The hang guard: ~15 s on a quiet machine.
        deadline=150.0,
    )
    outcome = run(settings, tmp_path)
    assert outcome.problems == []
    assert outcome.statuses == {"resolved": DEVICES * TASKS_PER_DEVICE}
    # The faults happened, and while the job ran.
    assert outcome.gateway_restarts == 1 and not outcome.job_final_before_gateway_kill
    assert outcome.broker_kills >= 1
    assert outcome.fleet["overlaps"] == 0
    # Re-sent requests reached devices again, and were counted.
    assert outcome.fleet["redelivered"] >= outcome.fleet["duplicates"] > 0
