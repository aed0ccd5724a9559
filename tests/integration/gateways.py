"""The whole gateway from outside, for the integration tests: its test configuration, the
types of the ``start_gateway`` / ``start_simulator`` fixtures, and the ``pm`` command run as a
subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from pm.config import Config
from pm.gateway import Gateway
from pm.mqtt import AnswerPathProbe
from pm.simulator import Simulator
from tests.waiting import poll_until

GatewayFactory = Callable[..., Awaitable[Gateway]]
SimulatorFactory = Callable[..., Awaitable[Simulator]]

# Seconds one CLI run may take (a Python start plus a few requests).
CLI_TIMEOUT = 15
REPOSITORY = Path(__file__).resolve().parents[2]


def gateway_config(**sections: dict[str, Any]) -> Config:
    """Test configuration: every port 0 (free), a unique MQTT client id, overrides on top."""
    base: dict[str, dict[str, Any]] = {
        "http": {"host": "127.0.0.1", "port": 0},
        "broker": {"host": "127.0.0.1", "port": 0},
        "mqtt": {"client_id": f"pm-test-{uuid.uuid4().hex[:8]}", "reconnect_max_delay": 0.5},
        "store": {"path": ":memory:"},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return msgspec.convert(base, Config)


async def probe_came_back(gateway: Gateway) -> AnswerPathProbe:
    """Wait until the gateway's answer-path probe has come back once (the probe publishes its
    first at once); callers bound it with their hang guard, and a probe the broker drops
    (an ACL) never comes back."""
    probe = gateway.answer_probe
    assert probe is not None
    await poll_until(lambda: probe.last_round_trip is not None)
    return probe


def cli_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a ``pm`` subprocess.

    Subprocesses run in a temporary directory so a ``pm serve`` leaves its default store
    (``./puppetmaster.db``) there, not in the repository; PYTHONPATH keeps ``pm`` importable.
    Inherited ``PM_*`` variables are dropped: a developer's PM_URL must not redirect a test.
    """
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PM_")}
    environment["PYTHONPATH"] = str(REPOSITORY)
    return {**environment, **(extra or {})}


async def pm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pm.cli ARGS`` to completion; stdout and stderr captured as text."""
    with trio.fail_after(CLI_TIMEOUT), tempfile.TemporaryDirectory() as directory:
        done = await trio.run_process(
            [sys.executable, "-m", "pm.cli", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=directory,
            env=cli_environment(env),
        )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )
