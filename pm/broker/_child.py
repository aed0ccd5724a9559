"""Child-process plumbing: fork a broker child, read its pipes, await and stop it.

Why we fork with :class:`subprocess.Popen` on the trio thread instead of
:func:`trio.lowlevel.open_process`: the child arms ``PR_SET_PDEATHSIG`` so it dies with a
SIGKILLed gateway, and the kernel ties that signal to the *thread* that forked it.
``open_process`` forks from a trio worker thread, and trio's idle worker threads exit after
10 s (``trio._core._thread_cache.IDLE_TIMEOUT``): measured, the broker was SIGKILLed exactly
10 s after start. Forking from the trio thread blocks it for under a millisecond (fork
0.3-0.5 ms measured on 2 cores, see docs/broker.md).
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess

import trio

from ._protocol import ReadyLine, parse_failure_line, parse_ready_line
from ._state import BrokerStartError

logger = logging.getLogger("pm.broker")

STOP_TIMEOUT = 3.0  # seconds between SIGTERM and SIGKILL

_STDERR_TAIL_LINES = 3  # stderr lines quoted in a start error
_MAX_LINE_BYTES = 64 * 1024  # a longer "line" from the child is cut, never buffered forever


class LineReader:
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


class Child:
    """One broker child process: its Popen, its output pipes and a way to await its exit.

    Args:
      command: the command line (:func:`pm.broker._arguments.child_command`).
      environment: its environment, ``None`` for ours.
    """

    def __init__(self, command: list[str], environment: dict[str, str] | None) -> None:
        stdout_read, stdout_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        try:
            # Blocking fork on the trio thread, on purpose (see the module docstring).
            self.process = subprocess.Popen(
                command,
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
        self.stdout = LineReader(self._stdout_stream)
        self.stderr = LineReader(self._stderr_stream)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self.stderr_closed = trio.Event()
        self.ready = False
        # Why the child could not start, from its failure line (pm.broker._protocol).
        self.failure_reason: str | None = None

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
        """Log every stderr line of the child; keep the last few for error messages.

        Lines written before the child is ready are held (the last few) and logged once it is
        ready: a child that cannot start says why in its start error instead, so a port in
        use is one line for the operator, not the library's traceback.
        """
        while (line := await self.stderr.next_line()) is not None:
            text = line.decode("utf-8", "replace").rstrip()
            self.stderr_tail.append(text)
            if self.ready:
                logger.warning("broker[%d]: %s", self.pid, text)
        self.stderr_closed.set()

    def mark_ready(self) -> None:
        """The child printed its ready line: log the stderr lines held until now."""
        self.ready = True
        for text in self.stderr_tail:
            logger.warning("broker[%d]: %s", self.pid, text)

    async def read_ready(self) -> ReadyLine | None:
        """Return the ready line, or ``None`` if stdout closed (the child died) first.

        Error handling: :class:`BrokerStartError` for a malformed ready line.
        """
        while (line := await self.stdout.next_line()) is not None:
            text = line.decode("utf-8", "replace")
            try:
                ready = parse_ready_line(text)
            except ValueError as error:
                raise BrokerStartError(f"malformed ready line {text!r}: {error}") from None
            if ready is not None:
                return ready
            reason = parse_failure_line(text)
            if reason is not None:
                self.failure_reason = reason
                continue
            logger.info("broker[%d] stdout: %s", self.pid, text)
        return None

    async def drain_stdout(self) -> None:
        """Read stdout until it closes so the child never blocks on a full pipe."""
        while (line := await self.stdout.next_line()) is not None:
            logger.info("broker[%d] stdout: %s", self.pid, line.decode("utf-8", "replace"))
