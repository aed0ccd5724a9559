"""Brokers and MQTT clients for the integration tests: a mosquitto subprocess on a free port,
a blocking paho QoS 1 round trip, an inbox for :mod:`pm.mqtt` messages."""

from __future__ import annotations

import ctypes
import math
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import trio

from bench._processes import free_port as free_port  # one place for test ports

if TYPE_CHECKING:
    from pm.broker import EmbeddedBroker

# How long mosquitto may take to start listening / to exit after SIGTERM.
_START_TIMEOUT = 5.0
_STOP_TIMEOUT = 5.0
# Hang guard of a test that starts broker children: one is ready in ~0.15 s, so wide margins.
HANG_GUARD = 20.0


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
        self.port = free_port()
        self._executable = executable
        self._directory = directory
        self._config = directory / "mosquitto.conf"
        self.configure()
        self._process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    def configure(self, extra: str = "", *, first: str = "") -> None:
        """Rewrite mosquitto.conf with ``extra`` lines appended, and ``first`` lines before all
        others (mosquitto wants ``per_listener_settings`` there); applies at the next start."""
        self._config.write_text(
            f"{first}listener {self.port} {self.host}\n"
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


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _qos1_round_trip(host: str, port: int, payload: bytes) -> bytes:
    """Subscribe, publish QoS 1 to the same topic, return what came back (blocking, paho)."""
    topic = f"test/broker/{uuid.uuid4().hex}"
    received: queue.Queue[bytes] = queue.Queue()
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex}")
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _client, _userdata, message: received.put(message.payload)
    client.connect(host, port, keepalive=10)
    # Without TCP_NODELAY a QoS 1 round trip waits on Nagle + delayed ACK.
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        assert subscribed.wait(5), "no SUBACK within 5 s"
        info = client.publish(topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        info.wait_for_publish(timeout=5)
        assert info.is_published(), "no PUBACK within 5 s"
        return received.get(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


async def round_trip(broker: EmbeddedBroker, payload: bytes) -> bytes:
    return await trio.to_thread.run_sync(_qos1_round_trip, broker.host, broker.port, payload)


class Inbox:
    """Collects (topic, payload) from on_message into a channel the test can await."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[tuple[str, bytes]](math.inf)

    def __call__(self, topic: str, payload: bytes) -> None:
        self.send.send_nowait((topic, payload))
