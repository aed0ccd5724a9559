"""What the gateway and its broker children (amqtt, mosquitto) agree on; no I/O beyond prctl.

Deliberately tiny, and shared by the parent (:mod:`pm.broker._supervisor`) and both children
(:mod:`pm.broker.amqtt`, :mod:`pm.broker.mosquitto`), which depend on this module and never on
each other or on the parent. It imports neither trio nor amqtt, so a child starts fast.

* stdout carries exactly one line, :data:`READY_PREFIX` followed by a JSON object
  ``{"host": ..., "port": ..., "pid": ...}``, printed once the listener is bound. ``port`` is
  the port actually bound, so ``--port 0`` works. A child that cannot start prints instead
  :data:`FAILED_PREFIX` and one line saying why, in words for the operator ("cannot listen on
  127.0.0.1:1883: Address already in use"), then exits :data:`EXIT_START_FAILED`.
* stderr carries warnings and errors, which the parent logs line by line.
* SIGTERM or SIGINT stop the broker cleanly and the process exits :data:`EXIT_OK`.
* The child asks the kernel for SIGKILL when its parent thread dies
  (:func:`set_parent_death_signal`), so a SIGKILLed gateway leaves no orphan holding the port.
* Exit status: :data:`EXIT_OK` after a requested stop, :data:`EXIT_USAGE` for bad arguments,
  :data:`EXIT_START_FAILED` if the broker cannot start (port in use, bad host, missing
  binary), :data:`EXIT_ORPHANED` if the parent died before the death signal was armed.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
from collections.abc import Callable
from typing import NamedTuple

READY_PREFIX = "pm-broker-ready "
FAILED_PREFIX = "pm-broker-failed "

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_START_FAILED = 3
EXIT_ORPHANED = 4

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class ReadyLine(NamedTuple):
    """The child's announcement that it accepts connections."""

    host: str
    port: int
    pid: int


def format_ready_line(host: str, port: int, pid: int) -> str:
    """The ready line a child prints on stdout, newline included."""
    return READY_PREFIX + json.dumps({"host": host, "port": port, "pid": pid}) + "\n"


def parse_ready_line(text: str) -> ReadyLine | None:
    """Parse one stdout line of a child.

    Returns:
      The :class:`ReadyLine`, or ``None`` if ``text`` is not a ready line (other output).

    Error handling: :class:`ValueError` naming the problem if it starts with
    :data:`READY_PREFIX` but is not a JSON object with a string host and integer port and pid.
    """
    if not text.startswith(READY_PREFIX):
        return None
    try:
        fields = json.loads(text[len(READY_PREFIX) :])
    except ValueError as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    host, port, pid = fields.get("host"), fields.get("port"), fields.get("pid")
    if not isinstance(host, str):
        raise ValueError("`host` is not a string")
    for name, value in (("port", port), ("pid", pid)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"`{name}` is not an integer")
    return ReadyLine(host, port, pid)  # type: ignore[arg-type]


def format_failure_line(reason: str) -> str:
    """The line a child prints on stdout when it cannot start, newline included."""
    return FAILED_PREFIX + " ".join(reason.split()) + "\n"


def parse_failure_line(text: str) -> str | None:
    """The reason of a failure line, or ``None`` if ``text`` is not one."""
    if not text.startswith(FAILED_PREFIX):
        return None
    return text[len(FAILED_PREFIX) :].strip() or "no reason given"


def cannot_listen(host: str, port: int, error: OSError) -> str:
    """The failure reason for a listener that could not bind, e.g. ``cannot listen on
    127.0.0.1:1883: Address already in use``."""
    why = os.strerror(error.errno) if error.errno else str(error)
    return f"cannot listen on {host}:{port}: {why}"


def describe_exit(returncode: int) -> str:
    """A child's exit status in words, for log lines and start errors."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == EXIT_START_FAILED:
        return "exit status 3: could not start"
    return f"exit status {returncode}"


def set_parent_death_signal(signum: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent dies.

    The kernel ties this to the parent *thread* that forked us, not the parent process (see
    ``prctl(2)``): the parent must fork from a thread that lives as long as it wants the broker
    (the supervisor forks from the trio thread for this reason).

    Args:
      signum: the signal to receive; SIGKILL because a dead parent cannot wait for a clean stop.

    Error handling: raises :class:`OSError` if ``prctl`` fails (not Linux, or refused).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")


def tie_to_parent(parent_pid: int | None, warn: Callable[[str], object]) -> bool:
    """Arm the parent-death signal; return False if the parent is already gone.

    Args:
      parent_pid: the pid the parent passed as ``--parent-pid``, or ``None`` to skip the check.
      warn: ``print``-like callable for the warning when ``prctl`` is unavailable.

    Returns:
      True to go on; False means exit with :data:`EXIT_ORPHANED` (the parent died before the
      signal was armed, so no signal will ever come).

    Error handling: a failing ``prctl`` is only warned about (the broker still runs; an orphan
    is possible).
    """
    try:
        set_parent_death_signal(signal.SIGKILL)
    except OSError as error:
        warn(f"broker: warning: no parent-death signal, may outlive its parent: {error}")
    return parent_pid is None or os.getppid() == parent_pid
