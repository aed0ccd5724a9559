"""The processes a benchmark runs: gateway, simulated fleet, bare broker; and what they cost.

Each is a separate OS process started with the project's own entry points, so the figures of
one (CPU seconds, peak RSS from ``/proc``) are its own and not the benchmark driver's.
Blocking helpers: the drivers call them before and after the measured parts, never inside.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pm.simulator import generate_mac_ids

READY_TIMEOUT = 120.0  # 10k device connections take a while to come up
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port free on 127.0.0.1 now, below the kernel's ephemeral range.

    A listener that is restarted on its port (a SIGKILLed gateway, its embedded broker) must
    find it free while the simulated devices on this same host keep reconnecting to it. A port
    from the ephemeral range (what binding port 0 gives) can meanwhile become one of those
    clients' own local ports, or a TCP self-connection of a client to the very port it dials:
    the restart then fails with "Address already in use". Found by the chaos test.
    """
    low, _ = _ephemeral_range()
    if low - _LOWEST_TEST_PORT < 1_000:  # an unusual kernel setting: no room below it
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])
    for _ in range(200):
        port = random.randrange(_LOWEST_TEST_PORT, low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {_LOWEST_TEST_PORT} and {low}")


# Below: registered services this machine may run; above (from the kernel's range): clients.
_LOWEST_TEST_PORT = 10_000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default
    return int(low), int(high)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def memory_kib(pid: int, key: str = "VmRSS") -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


@dataclass
class Service:
    """A started process; :meth:`stop` sends SIGTERM, then SIGKILL."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    info: dict[str, str | int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _start(
    name: str,
    command: list[str],
    ready: str,
    env: dict[str, str] | None,
    workdir: Path,
    ready_timeout: float = READY_TIMEOUT,
) -> Service:
    """Start ``command`` and wait (``ready_timeout`` s) for a stdout line containing ``ready``;
    stdout is kept in a log file (read back by polling, so a chatty process never blocks on a
    full pipe)."""
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    service = Service(name, process, log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if ready in text:
            return service
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{text[-3000:]}")
        time.sleep(0.05)
    service.stop()
    raise RuntimeError(f"{name} not ready in {ready_timeout:g} s:\n{log.read_text()[-3000:]}")


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pm-bench-") as path:
        yield Path(path)


MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
persistence false
max_queued_messages 1000000
max_inflight_messages 0
"""


def mosquitto_path() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise RuntimeError("mosquitto not found: apt-get install -y mosquitto")
    return found


def start_broker(
    engine: str, directory: Path, *, stock: bool = False, port: int | None = None
) -> Service:
    """A bare broker on ``port`` (default: a free one): ``amqtt`` (our child process entry
    point; ``stock`` uses amqtt's Broker without our subscription index) or ``mosquitto``."""
    port = free_port() if port is None else port
    if engine == "mosquitto":
        conf = directory / "mosquitto.conf"
        conf.write_text(MOSQUITTO_CONF.format(port=port))
        # mosquitto logs to stderr only on errors: readiness is the port accepting.
        service = _start("mosquitto", [mosquitto_path(), "-c", str(conf)], "", None, directory)
        _wait_listening(port)
    else:
        command = [sys.executable, "-m", "pm.broker.amqtt", "--port", str(port)]
        if stock:
            command.append("--stock-amqtt")
        service = _start("amqtt", command, "pm-broker-ready", None, directory)
    service.info = {"host": "127.0.0.1", "port": port, "engine": engine}
    return service


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def start_gateway(
    directory: Path,
    *,
    engine: str = "amqtt",
    external_port: int | None = None,
    extra_env: dict[str, str] | None = None,
    ports: tuple[int, int] | None = None,
    name: str = "gateway",
) -> Service:
    """``python -m pm.cli serve`` with an in-memory store on free ports.

    Args:
      engine: the embedded broker's engine (``amqtt`` or ``mosquitto``).
      external_port: connect to this broker instead of embedding one.
      extra_env: environment on top (``PM_STORE_PATH`` for a store that survives a restart).
      ports: (HTTP, embedded broker) ports, to restart a gateway where it was; default free.
      name: of the process and its log file (``<name>.log`` in ``directory``).
    """
    http_port, broker_port = (free_port(), free_port()) if ports is None else ports
    env = {
        "PM_STORE_PATH": ":memory:",
        # A 100k-task job body is ~2 MB of destinations.
        "PM_HTTP_MAX_BODY_BYTES": str(64 * 1024 * 1024),
        "PM_MQTT_CLIENT_ID": f"pm-bench-{http_port}",
        **(extra_env or {}),
    }
    if external_port is not None:
        env |= {
            "PM_BROKER_EMBEDDED": "false",
            "PM_MQTT_HOST": "127.0.0.1",
            "PM_MQTT_PORT": str(external_port),
        }
        mqtt_port = external_port
    else:
        if engine != "amqtt":
            env["PM_BROKER_ENGINE"] = engine
        mqtt_port = broker_port
    command = [
        sys.executable,
        "-m",
        "pm.cli",
        "serve",
        "--http",
        f"127.0.0.1:{http_port}",
        "--broker",
        f"127.0.0.1:{broker_port}",
        "--log-level",
        "warning",
    ]
    service = _start(name, command, "gateway ready", env, directory)
    service.info = {
        "url": f"http://127.0.0.1:{http_port}",
        "mqtt_port": mqtt_port,
        "http_port": http_port,
        "broker_port": broker_port,
    }
    return service


def start_fleet(
    directory: Path,
    mqtt_port: int,
    devices: int,
    connections: int | None,
    *,
    name: str = "fleet",
    options: tuple[str, ...] = (),
    ready_timeout: float = READY_TIMEOUT,
) -> Service:
    """``python -m pm.cli simulate``: ``devices`` ids from :func:`fleet_ids`, answering at once
    (unless ``options`` say otherwise, e.g. ``--latency``), over ``connections`` MQTT
    connections (one per device if ``None``); ``ready_timeout`` s for all to connect."""
    command = [
        sys.executable,
        "-m",
        "pm.cli",
        "simulate",
        "--devices",
        str(devices),
        "--mqtt",
        f"127.0.0.1:{mqtt_port}",
        "--stats-interval",
        "3600",
        "--log-level",
        "warning",
    ]
    if connections is not None:
        command += ["--connections", str(connections)]
    command += options
    return _start(name, command, "devices connected", None, directory, ready_timeout)


def fleet_ids(devices: int) -> list[str]:
    """The ids ``pm simulate --devices N`` answers for (generated, deterministic)."""
    return generate_mac_ids(devices)


def machine() -> dict[str, str | int]:
    """What the figures were measured on."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "cpu": model,
        "cores": os.cpu_count() or 0,
        "memory_gib": round(int(memory) / 1024 / 1024),
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
    }
