"""Child-process entry point of the embedded broker when ``broker.engine = "mosquitto"``.

Run as ``python -m pm.broker.mosquitto --host 127.0.0.1 --port 1883``. It speaks the same tiny
protocol to :mod:`pm.broker` as the amqtt child (:mod:`pm.broker._protocol`: one ready line on
stdout, SIGTERM for a clean stop, exit status 3 when the broker cannot start), so the gateway
starts, restarts and stops mosquitto exactly like amqtt.

Why a Python wrapper around the mosquitto binary: mosquitto prints nothing we could take as
"ready" and would need the port known in advance; the wrapper writes mosquitto's config in a
temporary directory, waits until the port accepts connections, prints the ready line, and
ties mosquitto's life to its own (``PR_SET_PDEATHSIG`` on both: a SIGKILLed gateway kills the
wrapper, which kills mosquitto). The wrapper costs ~10 MB and no CPU while mosquitto runs.

Presence (``--presence``, as the amqtt child): mosquitto logs every connection, its end and
every subscription on its stderr, which the wrapper reads line by line
(:mod:`pm.broker.mosquitto._presence_log`); each device that turns online or offline is
published retained, QoS 1, on its status topic by the wrapper's own MQTT client
(:mod:`pm.broker.mosquitto._announcer`), as the amqtt child does. Other log lines (errors,
warnings) go to the wrapper's stderr, which the gateway logs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from pm.broker._presence import PresenceTopics
from pm.broker._protocol import (
    EXIT_ORPHANED,
    EXIT_START_FAILED,
    cannot_listen,
    format_failure_line,
    format_ready_line,
    set_parent_death_signal,
    tie_to_parent,
)

from ._announcer import Announcer
from ._config import find_mosquitto, mosquitto_config
from ._presence_log import MosquittoLogPresence

START_TIMEOUT = 5.0  # mosquitto listens within ~10 ms here


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _bind_error(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be bound now, or ``None`` if it can.

    Checked before starting mosquitto: polling for a listener below would otherwise take a
    stale broker on the same port for ours.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error
    return None


def _fail(reason: str) -> int:
    """Report a start failure (:mod:`pm.broker._protocol`): the reason on stdout for the
    gateway, on stderr for the log; returns the exit status."""
    sys.stdout.write(format_failure_line(reason))
    sys.stdout.flush()
    print(reason, file=sys.stderr)
    return EXIT_START_FAILED


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _read_log(
    log: IO[str],
    presence: MosquittoLogPresence,
    announcer_ready: threading.Event,
    announcer: list[Announcer],
) -> None:
    """Read mosquitto's log until it closes: announce presence, pass other lines on."""
    for raw in log:
        line = raw.rstrip("\n")
        announcements = presence.feed(line)
        if announcements is None:
            print(line, file=sys.stderr, flush=True)
            continue
        if announcements:
            announcer_ready.wait()
            for topic, payload in announcements:
                announcer[0].publish(topic, payload)


def run(host: str, port: int, binary: str = "", presence: PresenceTopics | None = None) -> int:
    """Start mosquitto, print the ready line once it listens, stop it on SIGTERM/SIGINT.

    Returns:
      0 after a requested stop; :data:`EXIT_START_FAILED` if mosquitto is missing or does not
      listen; mosquitto's own status (negative: a signal) if it dies on its own.
    """
    executable = find_mosquitto(binary)
    if executable is None:
        where = binary or "on PATH or in /usr/sbin"
        return _fail(
            f"mosquitto not found ({where}): install it (apt-get install -y mosquitto), set "
            'broker.mosquitto_binary, or use broker.engine = "amqtt"'
        )
    if port == 0:
        # Small race (the port could be taken before mosquitto binds): then mosquitto exits
        # and the start fails with status 3 like any port clash.
        port = _free_port(host)
    elif (error := _bind_error(host, port)) is not None:
        return _fail(cannot_listen(host, port, error))
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    with tempfile.TemporaryDirectory(prefix="pm-mosquitto-") as directory:
        config = Path(directory) / "mosquitto.conf"
        config.write_text(mosquitto_config(host, port, presence=presence is not None))
        process = subprocess.Popen(
            [executable, "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr,  # stdout is the ready-line channel; mosquitto's logs go to ours
            stderr=sys.stderr if presence is None else subprocess.PIPE,
            text=True,
            preexec_fn=set_parent_death_signal,
        )
        announcer_ready, announcer = threading.Event(), []
        if presence is not None:
            assert process.stderr is not None
            threading.Thread(
                target=_read_log,
                args=(process.stderr, MosquittoLogPresence(presence), announcer_ready, announcer),
                name="mosquitto-log",
                daemon=True,
            ).start()
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(host, port):
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:
                    process.kill()
                status = process.wait()
                return _fail(f"mosquitto did not listen on {host}:{port} (status {status})")
            time.sleep(0.005)
        if presence is not None:
            try:
                announcer.append(Announcer(host, port, f"pm-presence-{secrets.token_hex(6)}"))
            except OSError as error:
                process.kill()
                process.wait()
                return _fail(f"cannot connect to mosquitto to publish presence: {error}")
            announcer_ready.set()
        sys.stdout.write(format_ready_line(host, port, os.getpid()))
        sys.stdout.flush()
        status = process.wait()
    return 0 if stop_requested else status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pm.broker.mosquitto")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--binary", default="", help="the mosquitto binary (default: search)")
    parser.add_argument(
        "--presence",
        type=PresenceTopics.from_json,
        default=None,
        help='JSON object {"request": template, "status": template}: publish device presence',
    )
    arguments = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not tie_to_parent(arguments.parent_pid, lambda line: print(line, file=sys.stderr)):
        return EXIT_ORPHANED
    return run(arguments.host, arguments.port, arguments.binary, arguments.presence)
