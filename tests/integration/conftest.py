"""Fixtures for tests against real brokers: a mosquitto subprocess on a free localhost port."""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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
        (path for path in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
         if Path(path).exists()),
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
