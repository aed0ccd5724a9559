"""The embedded MQTT broker: amqtt (or mosquitto) in a supervised child process.

:func:`run_embedded_broker` starts ``python -m pm._broker_process`` (``broker.engine =
"amqtt"``) or ``python -m pm._mosquitto`` (``"mosquitto"``: a wrapper that runs the mosquitto
binary with a generated config), waits for its ready line,
hands an :class:`EmbeddedBroker` to ``nursery.start`` and then keeps the broker alive until its
scope is cancelled.

Why a child process and not a thread or the gateway's own loop: amqtt is asyncio and
CPU-heavy per message (it scans every subscription filter per publish). In a child it has its
own core and no GIL contention with the trio loop; /work/shared/FACTS.md measured thread mode
~25-30% slower with twice the trio scheduling lag. The child costs little to start (measured
here on 2 cores: fork 0.3-0.5 ms, ready line 120-140 ms after fork, SIGTERM to exit ~27 ms).

Why we fork with :class:`subprocess.Popen` on the trio thread instead of
:func:`trio.lowlevel.open_process`: the child arms ``PR_SET_PDEATHSIG`` so it dies with a
SIGKILLed gateway, and the kernel ties that signal to the *thread* that forked it.
``open_process`` forks from a trio worker thread, and trio's idle worker threads exit after
10 s (``trio._core._thread_cache.IDLE_TIMEOUT``): measured, the broker was SIGKILLed exactly
10 s after start. Forking from the trio thread blocks it for under a millisecond.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import msgspec
import trio

from pm._broker_process import EXIT_START_FAILED, READY_PREFIX
from pm.config import BrokerConfig, Config
from pm.passwords import DEFAULT_GATEWAY_USERNAME, GATEWAY_PASSWORD_ENV, generate_password

logger = logging.getLogger("pm.broker")

START_TIMEOUT = 10.0  # seconds from fork to ready line; the child needs ~0.15 s
STOP_TIMEOUT = 3.0  # seconds between SIGTERM and SIGKILL
RESTART_MIN_DELAY = 0.1
RESTART_MAX_DELAY = 5.0
HEALTHY_UPTIME = 60.0  # a child that ran this long resets the restart delay

_STDERR_TAIL_LINES = 3  # stderr lines quoted in a start error
_MAX_LINE_BYTES = 64 * 1024  # a longer "line" from the child is cut, never buffered forever


class BrokerStartError(Exception):
    """The broker child did not become ready; the message says why (exit status, stderr)."""


class _ReadyLine(msgspec.Struct, frozen=True):
    host: str
    port: int
    pid: int


class RestartBackoff:
    """The delay before restarting a broker that exited unexpectedly.

    The first restart waits ``min_delay``; each following one doubles it up to ``max_delay``.
    A child that ran for ``healthy_uptime`` seconds or more counts as healthy: its restart
    starts again from ``min_delay``. Pure arithmetic, no clock: the caller passes the uptime.

    Args:
      min_delay: first delay, seconds.
      max_delay: cap, seconds.
      healthy_uptime: uptime that resets the sequence, seconds.
    """

    def __init__(
        self,
        min_delay: float = RESTART_MIN_DELAY,
        max_delay: float = RESTART_MAX_DELAY,
        healthy_uptime: float = HEALTHY_UPTIME,
    ) -> None:
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.healthy_uptime = healthy_uptime
        self._next = min_delay

    def next_delay(self, uptime: float) -> float:
        """Return the delay before the next restart, given how long the last child ran.

        Args:
          uptime: seconds the child was running (0 if it never became ready).

        Returns:
          Seconds to wait before starting the next child.
        """
        if uptime >= self.healthy_uptime:
            self._next = self.min_delay
        delay = self._next
        self._next = min(self._next * 2, self.max_delay)
        return delay


class BrokerAuth(msgspec.Struct, frozen=True, kw_only=True):
    """Device identity on the embedded broker (``broker.auth``): what the child enforces.

    ``gateway_password`` reaches the child through its environment, never its command line,
    and is left out of ``repr`` so no log line carries it.
    """

    password_file: str
    gateway_username: str
    gateway_password: str = msgspec.field(default="")
    gateway_client_id: str
    request_topic: str
    response_topic: str

    def __repr__(self) -> str:
        return f"<BrokerAuth file={self.password_file!r} gateway={self.gateway_username!r}>"

    def plugin_arguments(self) -> dict[str, str]:
        """The JSON the child passes to ``pm._amqtt_auth.plugin_config`` (no password)."""
        return {
            "password_file": os.path.abspath(self.password_file),
            "gateway_username": self.gateway_username,
            "gateway_client_id": self.gateway_client_id,
            "request_topic": self.request_topic,
            "response_topic": self.response_topic,
        }


def broker_auth(config: Config) -> BrokerAuth | None:
    """The embedded broker's auth settings, or ``None`` when ``broker.auth`` is off.

    The gateway logs in as ``mqtt.username`` (default ``$puppetmaster``) with
    ``mqtt.password``; an empty password is replaced by a random one made now, known only to
    this gateway process and its broker child, and never logged.
    """
    if not (config.broker.embedded and config.broker.auth):
        return None
    return BrokerAuth(
        password_file=config.broker.password_file,
        gateway_username=config.mqtt.username or DEFAULT_GATEWAY_USERNAME,
        gateway_password=config.mqtt.password or generate_password(),
        gateway_client_id=config.mqtt.client_id,
        request_topic=config.topics.request,
        response_topic=config.topics.response,
    )


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
    ) -> None:
        self.host = host
        self.port = port
        self.engine = engine
        self.auth = auth
        # (certfile, keyfile), absolute, when the listener speaks only TLS.
        self.tls = tls
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


# The child-process entry point of each engine; both speak the same ready-line protocol.
_ENGINE_MODULES = {"amqtt": "pm._broker_process", "mosquitto": "pm._mosquitto"}


def _child_command(host: str, port: int, engine: str = "amqtt") -> list[str]:
    # --parent-pid lets the child notice a parent that died before it armed PDEATHSIG.
    return [
        sys.executable,
        "-m",
        _ENGINE_MODULES[engine],
        "--host",
        host,
        "--port",
        str(port),
        "--parent-pid",
        str(os.getpid()),
    ]


def _auth_arguments(auth: BrokerAuth | None) -> list[str]:
    # No password here: a command line is visible to every user in `ps`.
    return [] if auth is None else ["--auth", json.dumps(auth.plugin_arguments())]


def _tls_files(config: BrokerConfig) -> tuple[str, str] | None:
    """``(certfile, keyfile)`` made absolute (the child may not share our working directory).

    Error handling: :class:`BrokerStartError` for TLS with the mosquitto engine.
    """
    if not config.tls:
        return None
    if config.engine != "amqtt":
        raise BrokerStartError(
            "broker.certfile/keyfile (TLS) are implemented for the amqtt engine only; with "
            "mosquitto configure its listener's certfile/keyfile and run it as an external "
            "broker (broker.embedded = false, mqtt.tls = true)"
        )
    return os.path.abspath(config.certfile), os.path.abspath(config.keyfile)


def _tls_arguments(tls: tuple[str, str] | None) -> list[str]:
    return [] if tls is None else ["--certfile", tls[0], "--keyfile", tls[1]]


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == EXIT_START_FAILED:
        return "exit status 3 (broker could not start: port in use or bad host?)"
    return f"exit status {returncode}"


class _LineReader:
    """Splits a byte stream into lines; a final unterminated chunk is returned as a line."""

    def __init__(self, stream: trio.lowlevel.FdStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._eof = False

    async def next_line(self) -> bytes | None:
        """Return the next line without its newline, or ``None`` at end of stream."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) >= _MAX_LINE_BYTES or (self._eof and self._buffer):
                line = bytes(self._buffer)
                self._buffer.clear()
                return line
            if self._eof:
                return None
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                self._eof = True
            self._buffer += chunk


class _Child:
    """One broker child process: its Popen, its output pipes and a way to await its exit."""

    def __init__(
        self,
        host: str,
        port: int,
        engine: str,
        auth: BrokerAuth | None,
        tls: tuple[str, str] | None = None,
    ) -> None:
        environment = None
        if auth is not None:
            environment = {**os.environ, GATEWAY_PASSWORD_ENV: auth.gateway_password}
        stdout_read, stdout_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        try:
            # Blocking fork on the trio thread, on purpose (see the module docstring).
            self.process = subprocess.Popen(
                _child_command(host, port, engine) + _auth_arguments(auth) + _tls_arguments(tls),
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=stdout_write,
                stderr=stderr_write,
                close_fds=True,
                # Its own process group: a Ctrl-C in the gateway's terminal (SIGINT to the
                # foreground group) must reach only the gateway, which then closes its MQTT
                # client before stopping the broker; the child dies with its parent anyway
                # (PR_SET_PDEATHSIG).
                process_group=0,
            )
        except BaseException:
            for fd in (stdout_read, stdout_write, stderr_read, stderr_write):
                os.close(fd)
            raise
        os.close(stdout_write)
        os.close(stderr_write)
        self._stdout_stream = trio.lowlevel.FdStream(stdout_read)
        self._stderr_stream = trio.lowlevel.FdStream(stderr_read)
        self.stdout = _LineReader(self._stdout_stream)
        self.stderr = _LineReader(self._stderr_stream)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self.stderr_closed = trio.Event()

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait(self) -> int:
        """Wait for the child to exit and reap it.

        Returns:
          Its exit status (negative: the signal that killed it).
        """
        if self.process.returncode is not None:
            return self.process.returncode
        try:
            pidfd = os.pidfd_open(self.process.pid)
        except OSError:
            # No pidfd (kernel < 5.3): poll; a broker exit is rare and 50 ms is soon enough.
            while self.process.poll() is None:  # noqa: ASYNC110 - nothing to wait on but time
                await trio.sleep(0.05)
            return self.process.returncode
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        # The pidfd is readable once the child exited: this wait() returns at once.
        return self.process.wait()

    async def stop(self) -> int:
        """SIGTERM, wait up to :data:`STOP_TIMEOUT`, then SIGKILL; always reaps the child.

        Returns:
          The child's exit status.

        Error handling: runs shielded, so cancellation cannot leave an orphan.
        """
        with trio.CancelScope(shield=True):
            if self.process.returncode is None:
                self.process.send_signal(signal.SIGTERM)
                with trio.move_on_after(STOP_TIMEOUT):
                    return await self.wait()
                logger.warning(
                    "embedded broker (pid %d) ignored SIGTERM for %.0f s; killing it",
                    self.pid,
                    STOP_TIMEOUT,
                )
                self.process.send_signal(signal.SIGKILL)
            return await self.wait()

    async def close_pipes(self) -> None:
        with trio.CancelScope(shield=True):
            await self._stdout_stream.aclose()
            await self._stderr_stream.aclose()

    async def log_stderr(self) -> None:
        """Log every stderr line of the child; keep the last few for error messages."""
        while (line := await self.stderr.next_line()) is not None:
            text = line.decode("utf-8", "replace").rstrip()
            self.stderr_tail.append(text)
            logger.warning("broker[%d]: %s", self.pid, text)
        self.stderr_closed.set()

    async def read_ready(self) -> _ReadyLine | None:
        """Return the ready line, or ``None`` if stdout closed (the child died) first."""
        while (line := await self.stdout.next_line()) is not None:
            text = line.decode("utf-8", "replace")
            if text.startswith(READY_PREFIX):
                try:
                    return msgspec.json.decode(text[len(READY_PREFIX) :], type=_ReadyLine)
                except msgspec.ValidationError as error:
                    raise BrokerStartError(f"malformed ready line {text!r}: {error}") from None
            logger.info("broker[%d] stdout: %s", self.pid, text)
        return None

    async def drain_stdout(self) -> None:
        """Read stdout until it closes so the child never blocks on a full pipe."""
        while (line := await self.stdout.next_line()) is not None:
            logger.info("broker[%d] stdout: %s", self.pid, line.decode("utf-8", "replace"))


async def _run_child(
    broker: EmbeddedBroker,
    port: int,
    start_timeout: float,
    on_ready: Callable[[_ReadyLine], None],
) -> int:
    """Start one child, call ``on_ready`` once it is ready, return its status when it exits.

    Error handling: raises :class:`BrokerStartError` if it does not become ready; on
    cancellation the child is stopped (shielded) before ``Cancelled`` propagates.
    """
    child = _Child(broker.host, port, broker.engine, broker.auth, broker.tls)
    broker._process = child.process
    broker.pid = child.pid
    try:
        failure: BrokerStartError | None = None
        status = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child.log_stderr)
            # Failures are raised after the nursery so callers get BrokerStartError itself,
            # not an ExceptionGroup around it.
            ready: _ReadyLine | None = None
            with trio.move_on_after(start_timeout) as timeout:
                try:
                    ready = await child.read_ready()
                except BrokerStartError as error:
                    failure = error
            if failure is None and ready is None:
                failure = await _start_failure(
                    child, broker.host, port, start_timeout, exited=not timeout.cancelled_caught
                )
            if ready is not None:
                broker.running = True
                on_ready(ready)
                broker._notify()
                nursery.start_soon(child.drain_stdout)
                status = await child.wait()
                # A crashing child's last words (a traceback) may still be in the pipe.
                with trio.move_on_after(0.5):
                    await child.stderr_closed.wait()
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return status
    finally:
        broker.running = False
        await child.stop()
        await child.close_pipes()
        broker.last_exit = child.process.returncode
        broker._process = None
        broker.pid = None
        broker._notify()


async def _start_failure(
    child: _Child, host: str, port: int, start_timeout: float, exited: bool
) -> BrokerStartError:
    """Reap a child that did not become ready and build the error that explains why."""
    if exited:
        # stdout closed: the child is exiting; give it a moment so its status explains why.
        with trio.move_on_after(STOP_TIMEOUT):
            await child.wait()
    status = await child.stop()
    # The stderr reader may still hold the child's last words (a traceback): let it finish.
    with trio.move_on_after(0.5):
        await child.stderr_closed.wait()
    why = (
        "exited before it was ready"
        if exited
        else (f"printed no ready line within {start_timeout:g} s")
    )
    # The last lines say why (the child's own summary comes last); all of them were logged.
    tail = "\n".join(child.stderr_tail) or "(no stderr output)"
    return BrokerStartError(
        f"embedded broker on {host}:{port} {why} ({_describe_exit(status)}); stderr:\n{tail}"
    )


async def run_embedded_broker(
    config: BrokerConfig,
    *,
    auth: BrokerAuth | None = None,
    start_timeout: float = START_TIMEOUT,
    task_status: trio.TaskStatus[EmbeddedBroker] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the embedded broker (amqtt or mosquitto) in a child process and keep it running.

    Use as ``broker = await nursery.start(run_embedded_broker, config.broker)``; the
    :class:`EmbeddedBroker` is handed over once the broker accepts connections.

    Restart policy: if the child exits while we did not ask it to (crash, OOM kill,
    :meth:`EmbeddedBroker.kill`), the exit is logged with its status and the child is restarted
    on the same host and port, after a delay of 0.1 s doubling up to 5 s; a child that ran 60 s
    or more resets the delay to 0.1 s. A restart that fails to become ready counts as another
    unexpected exit: it is retried with the next delay, forever, because the gateway is useless
    without its broker and the usual cause (the port briefly taken) is transient.
    Connected clients lose their sessions at a restart; they must reconnect and resubscribe.

    Shutdown: when the enclosing scope is cancelled the child gets SIGTERM (amqtt closes its
    sessions and exits 0), then SIGKILL after 3 s; this cleanup is shielded and always reaps
    the child. If the gateway itself is SIGKILLed, the kernel kills the child
    (``PR_SET_PDEATHSIG``).

    Args:
      config: host and port to bind; port 0 picks a free port once, then keeps it.
      auth: device identity and topic ACL (:func:`broker_auth`); ``None``: anonymous access.
        ``config.certfile``/``keyfile`` set: the listener speaks only TLS (amqtt only).
      start_timeout: seconds each child has to print its ready line.
      task_status: for ``nursery.start``.

    Returns:
      Never returns normally; it runs until cancelled.

    Error handling: the *first* start failing raises :class:`BrokerStartError` (with the
    child's exit status and last stderr lines) out of ``nursery.start``, so a misconfigured
    gateway stops at once. Later failures are logged and retried as above.
    """
    if auth is not None and config.engine != "amqtt":
        raise BrokerStartError(
            "broker.auth is implemented for the amqtt engine only; with mosquitto use its "
            "password_file and acl_file as an external broker (README, Security)"
        )
    broker = EmbeddedBroker(config.host, config.port, config.engine, auth, _tls_files(config))
    backoff = RestartBackoff()
    handed_over = False

    while True:
        ready_at: float | None = None

        def on_ready(ready: _ReadyLine) -> None:
            nonlocal ready_at, handed_over
            ready_at = trio.current_time()
            if not handed_over:
                # Keep the port actually bound (port 0) for every restart.
                broker.port = ready.port
                handed_over = True
                task_status.started(broker)

        try:
            status = await _run_child(broker, broker.port, start_timeout, on_ready)
            reason = _describe_exit(status)
        except BrokerStartError as error:
            if not handed_over:
                raise
            reason = str(error)
        uptime = 0.0 if ready_at is None else trio.current_time() - ready_at
        delay = backoff.next_delay(uptime)
        logger.error(
            "embedded broker on %s:%d stopped unexpectedly after %.1f s: %s; restart in %.1f s",
            broker.host,
            broker.port,
            uptime,
            reason,
            delay,
        )
        await trio.sleep(delay)
        broker.restarts += 1
