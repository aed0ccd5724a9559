"""Fixtures for tests against real brokers: a mosquitto subprocess on a free localhost port."""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from pm.config import Config
from pm.gateway import Gateway, run_gateway
from pm.simulator import Simulator, SimulatorSettings, run_simulator

# How long mosquitto may take to start listening / to exit after SIGTERM.
_START_TIMEOUT = 5.0
_STOP_TIMEOUT = 5.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    # A SIGKILLed pytest runs no fixture teardown: have the kernel stop the broker too, or it
    # keeps the port and the next run's fixture talks to a stale broker.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class MosquittoBroker:
    """A mosquitto subprocess bound to ``host:port``, which can be stopped and started again.

    ``host, port = broker`` unpacks its address. :meth:`start` and :meth:`stop` block (briefly):
    call them from trio tests through :func:`trio.to_thread.run_sync`.
    """

    def __init__(self, executable: str, directory: Path) -> None:
        self.host = "127.0.0.1"
        self.port = _free_port()
        self._executable = executable
        self._directory = directory
        self._config = directory / "mosquitto.conf"
        self.configure()
        self._process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    def configure(self, extra: str = "") -> None:
        """Rewrite mosquitto.conf with ``extra`` lines appended; applies at the next start."""
        self._config.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            # Without it small packets wait for Nagle: QoS 1 request/response crawls.
            "set_tcp_nodelay true\n"
            "persistence false\n"
            # The default (1000 per client) would drop the tail of a burst at the broker and
            # make burst tests measure mosquitto's limit instead of our client.
            "max_queued_messages 100000\n" + extra
        )

    def __iter__(self) -> Iterator[str | int]:
        return iter((self.host, self.port))

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start mosquitto and return once it accepts TCP connections on the port.

        Error handling: raises :exc:`RuntimeError` with mosquitto's log if it exits or does not
        listen within a few seconds (for example when the port is taken).
        """
        if self.running:
            raise RuntimeError("mosquitto is already running")
        self._starts += 1
        log_path = self._directory / f"mosquitto-{self._starts}.log"
        with log_path.open("wb") as log_file:
            self._process = subprocess.Popen(
                [self._executable, "-c", str(self._config)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._process.returncode}:\n{log_path.read_text()}"
                )
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.01)
                continue
            return
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{log_path.read_text()}")

    def pause(self) -> None:
        """Freeze mosquitto (SIGSTOP): sockets stay open but nothing is answered."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL) and wait until it has exited."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # A paused broker would ignore SIGTERM until resumed.
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running mosquitto on a free 127.0.0.1 port; killed at the end of the test.

    Fails (does not skip) when mosquitto is missing: CI installs it, and a silently skipped
    broker test would hide a broken MQTT client.
    """
    executable = shutil.which("mosquitto") or next(
        (
            path
            for path in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
            if Path(path).exists()
        ),
        None,
    )
    if executable is None:
        pytest.fail("mosquitto not found on PATH: install it with `apt-get install -y mosquitto`")
    broker = MosquittoBroker(executable, tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# -- the whole gateway, and simulated devices -------------------------------------------------

GatewayFactory = Callable[..., Awaitable[Gateway]]
SimulatorFactory = Callable[..., Awaitable[Simulator]]


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


@pytest.fixture
def start_gateway(nursery: trio.Nursery) -> GatewayFactory:
    """``await start_gateway(tasks={"default_timeout": 5})``: a real gateway (embedded amqtt
    broker in a child process, MQTT client, engine, HTTP server) on free ports, stopped with
    the test."""

    async def start(**sections: dict[str, Any]) -> Gateway:
        with trio.fail_after(20):
            return await nursery.start(run_gateway, gateway_config(**sections))

    return start


@pytest.fixture
def start_simulator(nursery: trio.Nursery) -> SimulatorFactory:
    """``await start_simulator(gateway, ["aa", "bb"], latency=0.1)``: devices on real MQTT
    connections to the gateway's broker."""

    async def start(gateway: Gateway, devices: list[str], **settings: Any) -> Simulator:
        with trio.fail_after(30):
            return await nursery.start(
                run_simulator,
                SimulatorSettings(
                    host=gateway.mqtt_host,
                    port=gateway.mqtt_port,
                    devices=devices,
                    **{"record_requests": True, **settings},
                ),
            )

    return start


@pytest.fixture
async def http(nursery: trio.Nursery) -> AsyncIterator[Callable[[Gateway], httpx.AsyncClient]]:
    """``http(gateway)``: an httpx client for that gateway's API, closed with the test."""
    clients: list[httpx.AsyncClient] = []

    def client(gateway: Gateway) -> httpx.AsyncClient:
        made = httpx.AsyncClient(base_url=gateway.http_url, timeout=10)
        clients.append(made)
        return made

    yield client
    for made in clients:
        await made.aclose()


async def poll_until(condition: Callable[[], bool], interval: float = 0.01) -> None:
    """Wait for a counter owned by another part of the system (a simulator's statistics) to
    reach a value; callers bound it with their test's hang guard."""
    while not condition():  # noqa: ASYNC110 - nothing to wait on but the counter itself
        await trio.sleep(interval)
