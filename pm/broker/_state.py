"""The state handle of the embedded broker (what the gateway holds) and its start error."""

from __future__ import annotations

import signal
import subprocess
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._arguments import BrokerAuth


class BrokerStartError(Exception):
    """The broker child did not become ready; the message says why (exit status, stderr).

    Attributes:
      reason: the child's own one-line reason (``cannot listen on 127.0.0.1:1883: Address
        already in use``, ``mosquitto not found: ...``), ``None`` if it gave none.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class EmbeddedBroker:
    """What ``nursery.start(run_embedded_broker, config)`` returns: the running broker.

    Attributes:
      host: the address clients connect to.
      engine: ``"amqtt"`` or ``"mosquitto"`` (``broker.engine``).
      tls: ``(certfile, keyfile)`` when the listener speaks only TLS, else ``None``.
      port: the port bound by the first child (the actual one when configured as 0); every
        restart binds this same port so clients reconnect to the same address.
      pid: the current child's process id, ``None`` between children.
      restarts: how many times the child was restarted after an unexpected exit.
      running: true while a child is ready and has not exited.
      last_exit: the exit status of the previous child (negative: killed by that signal).
    """

    def __init__(
        self,
        host: str,
        port: int,
        engine: str = "amqtt",
        auth: BrokerAuth | None = None,
        tls: tuple[str, str] | None = None,
        presence: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.engine = engine
        self.auth = auth
        # (certfile, keyfile), absolute, when the listener speaks only TLS.
        self.tls = tls
        # (request, status) topic templates: the amqtt child publishes presence (issue 11).
        self.presence = presence
        self.pid: int | None = None
        self.restarts = 0
        self.running = False
        self.last_exit: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return (
            f"<EmbeddedBroker {self.host}:{self.port} pid={self.pid} running={self.running} "
            f"restarts={self.restarts}>"
        )

    def kill(self) -> None:
        """SIGKILL the current child (fault injection); the supervisor restarts it.

        Error handling: does nothing if no child is running.
        """
        process = self._process
        if process is not None and process.returncode is None:
            # Safe against pid reuse: Popen reaps only in wait()/poll(), which send_signal
            # calls first, so an exited child is a zombie still owning its pid.
            process.send_signal(signal.SIGKILL)

    async def wait_running(self, *, restarts: int = 0) -> None:
        """Wait until a child is ready after at least ``restarts`` restarts.

        Args:
          restarts: the restart count to reach; 0 waits for any running child.

        Error handling: waits forever if the supervisor stops; wrap it in ``trio.fail_after``.
        """
        while not (self.running and self.restarts >= restarts):
            await self.wait_changed()

    async def wait_changed(self) -> None:
        """Wait for the next state change: a child became ready, or a child exited."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
