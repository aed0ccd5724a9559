"""The chaos soak's machinery: its processes, the faults done to them, and the checks.

:mod:`bench.chaos` is the command line and the report; this module runs one soak
(:func:`run`) and says what it saw (:class:`ChaosOutcome`). Blocking calls throughout: the
driver is a plain loop that polls the job and does each fault when it is due.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._load import FINAL_STATUSES, job_body
from bench._processes import (
    Service,
    children_of,
    fleet_ids,
    memory_kib,
    start_broker,
    start_fleet,
    start_gateway,
)
from pm.schemas import FINAL_TASK_STATUSES

# Seconds between two looks at the kill schedule, and between two GETs of the job (a job
# view lists every task id: ~200 KB for 20,000 tasks, not to be asked for ten times a second).
SCHEDULE_INTERVAL = 0.1
JOB_POLL_INTERVAL = 0.5
# Seconds a SIGKILLed gateway's broker child may take to be gone (it holds the broker port).
CHILD_EXIT_TIMEOUT = 10.0
# Samples averaged at each end of the memory soak.
SAMPLES_AVERAGED = 3
_FLEET_FIGURE = re.compile(
    r"(received|answered|errors|silent|overlaps|duplicates|redelivered) (\d+)"
)


@dataclass
class ChaosSettings:
    """What a run does; the defaults are the full soak (a 20,000-task job, 2,000 devices)."""

    devices: int = 2000
    entries: int = 10
    broker: str = "embedded"  # or "mosquitto": external, killed and restarted by this driver
    kill_broker_every: float = 5.0  # seconds of broker uptime between kills; 0: never
    max_broker_kills: int | None = None  # then the broker is left alone (None: no limit)
    broker_down: float = 0.5  # external mosquitto: seconds between its kill and its restart
    kill_gateway_at: float | None = 10.0  # seconds after the POST; None: never
    # Each device's answer: > 0, or overlaps cannot be seen; long enough for the job to last
    # past the faults (10 sequential tasks per device: at least 10 x latency).
    latency: float = 0.5
    task_timeout: float = 600.0  # long: a task that times out was lost, not slow
    deadline: float = 1800.0  # the whole run; beyond it the run fails as a hang
    soak_seconds: float = 0.0  # > 0: memory mode
    warmup: float = 120.0
    sample_every: float = 5.0
    # More of the gateway's environment (``PM_<SECTION>_<KEY>``), e.g. a lower
    # ``PM_TASKS_MAX_FINISHED_TASKS`` to reach steady memory sooner.
    gateway_env: dict[str, str] = field(default_factory=dict)


@dataclass
class ChaosOutcome:
    """What a run saw; ``problems`` is empty when every check passed."""

    tasks: int = 0
    jobs: int = 0
    seconds: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    broker_kills: int = 0
    gateway_restarts: int = 0
    job_final_before_gateway_kill: bool = False
    fleet: dict[str, int] = field(default_factory=dict)
    rss_mib: list[tuple[float, float, float]] = field(default_factory=list)  # t, gateway, broker
    problems: list[str] = field(default_factory=list)

    def growth(self, warmup: float) -> tuple[float, float] | None:
        """(gateway, broker) resident memory growth after warm-up, as fractions; None if the
        run had too few samples after it."""
        after = [sample for sample in self.rss_mib if sample[0] >= warmup]
        if len(after) < 2 * SAMPLES_AVERAGED:
            return None
        first, last = after[:SAMPLES_AVERAGED], after[-SAMPLES_AVERAGED:]
        return (
            _mean(s[1] for s in last) / _mean(s[1] for s in first) - 1,
            _mean(s[2] for s in last) / _mean(s[2] for s in first) - 1,
        )


def _mean(values: Any) -> float:  # noqa: ANN401 - any iterable of floats
    values = list(values)
    return sum(values) / len(values)


class ChaosRun:
    """The processes of one run and the faults done to them (blocking calls throughout)."""

    def __init__(self, settings: ChaosSettings, directory: Path) -> None:
        if settings.latency <= 0:
            raise ValueError("latency must be > 0: a device that answers at once is never busy")
        self.settings = settings
        self.directory = directory
        self.outcome = ChaosOutcome()
        self.started = time.monotonic()
        self.mosquitto: Service | None = None
        self.mosquitto_port = 0
        self.mosquitto_restart_at: float | None = None
        self.last_killed: int | None = None
        self.gateway: Service | None = None
        self.fleet: Service | None = None
        self.gateway_env = {
            "PM_STORE_PATH": str(directory / "chaos.db"),
            "PM_TASKS_DEFAULT_TIMEOUT": str(settings.task_timeout),
            **settings.gateway_env,
        }

    def say(self, event: str) -> None:
        """A progress line on stderr: a long soak shows what it is doing."""
        print(f"[{time.monotonic() - self.started:7.1f} s] {event}", file=sys.stderr, flush=True)

    # -- processes ---------------------------------------------------------------------------

    def start(self) -> None:
        external_port = None
        if self.settings.broker == "mosquitto":
            self.mosquitto = start_broker("mosquitto", self.directory)
            self.mosquitto_port = external_port = int(self.mosquitto.info["port"])
        self.gateway = start_gateway(
            self.directory,
            external_port=external_port,
            extra_env=self.gateway_env,
            name="gateway-1",
        )
        self.fleet = start_fleet(
            self.directory,
            int(self.gateway.info["mqtt_port"]),
            self.settings.devices,
            None,  # one MQTT connection per device
            options=("--latency", str(self.settings.latency), "--track-redeliveries"),
        )
        self.say(f"gateway, broker and {self.settings.devices} devices up")

    def stop(self) -> None:
        """Stop everything still running; read the fleet's final figures."""
        if self.fleet is not None:
            self.fleet.stop()
            found = _FLEET_FIGURE.findall(_last_line(self.fleet.log, "at stop:"))
            self.outcome.fleet = {name: int(value) for name, value in found}
        for service in (self.gateway, self.mosquitto):
            if service is not None:
                service.stop()

    def broker_pid(self) -> int | None:
        if self.mosquitto is not None:
            return self.mosquitto.pid if self.mosquitto.process.poll() is None else None
        assert self.gateway is not None
        children = children_of(self.gateway.pid)
        return children[0] if children else None

    def kill_broker(self) -> None:
        pid = self.broker_pid()
        if pid is None or pid == self.last_killed:
            # Down already: being restarted, or killed and not yet reaped by the gateway.
            return
        self.last_killed = pid
        if self.mosquitto is not None:
            self.mosquitto.process.kill()
            self.mosquitto.process.wait()
            self.mosquitto_restart_at = time.monotonic() + self.settings.broker_down
        else:
            _kill(pid)
        self.outcome.broker_kills += 1
        self.say(f"broker (pid {pid}) SIGKILLed")

    def done_killing(self) -> bool:
        limit = self.settings.max_broker_kills
        return limit is not None and self.outcome.broker_kills >= limit

    def restart_mosquitto_if_due(self, *, now: bool = False) -> None:
        due = self.mosquitto_restart_at
        if due is None or (not now and time.monotonic() < due):
            return
        self.mosquitto = start_broker("mosquitto", self.directory, port=self.mosquitto_port)
        self.mosquitto_restart_at = None
        self.say("mosquitto started again")

    def kill_and_restart_gateway(self) -> None:
        gateway = self.gateway
        assert gateway is not None
        child = self.broker_pid() if self.mosquitto is None else None
        gateway.process.kill()
        gateway.process.wait()
        if child is not None:
            # The kernel kills the child (PR_SET_PDEATHSIG); it must be gone before the new
            # gateway's broker binds the same port.
            _wait_gone(child)
        # A new gateway waits for its broker: an external one must be up.
        self.restart_mosquitto_if_due(now=True)
        self.outcome.gateway_restarts += 1
        self.say(f"gateway (pid {gateway.pid}) SIGKILLed; starting it again")
        self.gateway = start_gateway(
            self.directory,
            external_port=self.mosquitto_port or None,
            extra_env=self.gateway_env,
            ports=(int(gateway.info["http_port"]), int(gateway.info["broker_port"])),
            name=f"gateway-{self.outcome.gateway_restarts + 1}",
        )

    def sample_memory(self) -> None:
        assert self.gateway is not None
        broker = self.broker_pid()
        if broker is None:
            return
        try:
            gateway_mib = memory_kib(self.gateway.pid) / 1024
            broker_mib = memory_kib(broker) / 1024
        except (OSError, RuntimeError):
            return  # a process ended between the look-up and the read
        elapsed = time.monotonic() - self.started
        self.outcome.rss_mib.append(
            (round(elapsed, 1), round(gateway_mib, 1), round(broker_mib, 1))
        )

    # -- the job -----------------------------------------------------------------------------

    def url(self) -> str:
        assert self.gateway is not None
        return str(self.gateway.info["url"])

    def run_job(
        self, client: httpx.Client, ids: list[str], *, kill_gateway: bool
    ) -> dict[str, Any]:
        """POST one job and wait for its final status, doing the faults on schedule meanwhile:
        broker kills if ``kill_broker_every``, and the gateway's if ``kill_gateway``."""
        settings = self.settings
        response = client.post(
            "/jobs",
            content=job_body(ids, settings.entries, timeout=settings.deadline),
            headers={"content-type": "application/json"},
        )
        response.raise_for_status()
        job_id = int(response.json()["id"])
        self.say(f"job {job_id} posted")
        posted = time.monotonic()
        every = settings.kill_broker_every
        # (pid, when first seen) of the broker process now running.
        broker_seen: tuple[int | None, float] = (None, posted)
        gateway_kill = (
            posted + settings.kill_gateway_at
            if kill_gateway and settings.kill_gateway_at is not None
            else None
        )
        next_sample = next_poll = time.monotonic()
        while True:
            now = time.monotonic()
            if now - self.started > settings.deadline:
                raise TimeoutError(f"job {job_id} not final after {settings.deadline:g} s")
            if self.settings.soak_seconds > 0 and now >= next_sample:
                self.sample_memory()
                next_sample = now + settings.sample_every
            self.restart_mosquitto_if_due()
            if every > 0:
                pid = self.broker_pid()
                if pid != broker_seen[0]:
                    broker_seen = (pid, now)
                elif pid is not None and now - broker_seen[1] >= every and not self.done_killing():
                    self.kill_broker()
            if gateway_kill is not None and now >= gateway_kill:
                gateway_kill = None
                job = _get_job(client, job_id)
                self.outcome.job_final_before_gateway_kill = (
                    job is not None and job["status"] in FINAL_STATUSES
                )
                self.kill_and_restart_gateway()
                continue
            if now >= next_poll:
                next_poll = now + JOB_POLL_INTERVAL
                job = _get_job(client, job_id)
                if job is not None and job["status"] in FINAL_STATUSES:
                    break
            time.sleep(SCHEDULE_INTERVAL)
        self.outcome.seconds += time.monotonic() - posted
        response = client.get(f"/jobs/{job_id}", params={"collection": "true"})
        response.raise_for_status()
        final: dict[str, Any] = response.json()
        return final


def run(settings: ChaosSettings, directory: Path) -> ChaosOutcome:
    """One run in ``directory``: settle mode, or memory mode if ``settings.soak_seconds``."""
    chaos = ChaosRun(settings, directory)
    ids = fleet_ids(settings.devices)
    try:
        chaos.start()
        with httpx.Client(base_url=chaos.url(), timeout=30) as client:
            # The URL stays the same across a gateway restart (same port).
            while True:
                job = chaos.run_job(client, ids, kill_gateway=settings.soak_seconds == 0)
                chaos.outcome.jobs += 1
                check_job(job, len(ids) * settings.entries, chaos.outcome)
                elapsed = time.monotonic() - chaos.started
                if settings.soak_seconds == 0 or elapsed >= settings.soak_seconds:
                    break
    finally:
        chaos.stop()
    check_fleet(chaos.outcome)
    check_faults(settings, chaos.outcome)
    return chaos.outcome


def check_job(job: dict[str, Any], tasks: int, outcome: ChaosOutcome) -> None:
    """Every task listed once with one final status; the job's counts agree with them."""
    problems = outcome.problems
    collection = job["collection"]
    ids = [task["id"] for task in collection]
    statuses = Counter(task["__task"]["status"] for task in collection)
    outcome.tasks += len(collection)
    outcome.statuses.update(statuses)
    label = f"job {job['id']}"
    if len(collection) != tasks or len(set(ids)) != len(ids):
        problems.append(
            f"{label}: {len(collection)} tasks listed, {len(set(ids))} distinct; {tasks} expected"
        )
    unsettled = sum(n for status, n in statuses.items() if status not in FINAL_TASK_STATUSES)
    if unsettled:
        problems.append(f"{label}: {unsettled} tasks not final ({dict(statuses)})")
    resolved = statuses["resolved"]
    if job["status"] != "resolved" or resolved != tasks:
        problems.append(f"{label} ended {job['status']}: {dict(statuses)} (devices never fail)")
    expected_counts = {
        "totalCount": tasks,
        "doneCount": len(collection) - unsettled,
        "finishCount": resolved,
        "errorCount": len(collection) - unsettled - resolved,
    }
    for name, value in expected_counts.items():
        if job[name] != value:
            problems.append(f"{label}: {name} {job[name]}, its tasks say {value}")


def check_faults(settings: ChaosSettings, outcome: ChaosOutcome) -> None:
    """A fault that came after the job ended tested nothing: that run proves nothing."""
    if settings.soak_seconds > 0:
        return
    if settings.kill_gateway_at is not None and (
        outcome.gateway_restarts == 0 or outcome.job_final_before_gateway_kill
    ):
        outcome.problems.append(
            "the job ended before the gateway was killed: lower --kill-gateway-at or raise "
            "--latency"
        )
    if settings.kill_broker_every > 0 and outcome.broker_kills == 0:
        outcome.problems.append(
            "the job ended before the broker was killed: lower --kill-broker-every or raise "
            "--latency"
        )


def check_fleet(outcome: ChaosOutcome) -> None:
    fleet = outcome.fleet
    if not fleet:
        outcome.problems.append("the fleet's final figures are missing from its log")
    elif fleet.get("overlaps", 0):
        outcome.problems.append(
            f"{fleet['overlaps']} requests reached a device busy with another one"
        )


def _get_job(client: httpx.Client, job_id: int) -> dict[str, Any] | None:
    """The job, or None while the gateway is down or restarting."""
    try:
        response = client.get(f"/jobs/{job_id}")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    job: dict[str, Any] = response.json()
    return job


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + CHILD_EXIT_TIMEOUT
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _last_line(log: Path, prefix: str) -> str:
    lines = [
        line for line in log.read_text(errors="replace").splitlines() if line.startswith(prefix)
    ]
    return lines[-1] if lines else ""
