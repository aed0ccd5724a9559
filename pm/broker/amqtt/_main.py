"""Child-process entry point of the embedded MQTT broker (amqtt on asyncio).

Run as ``python -m pm._broker_process --host 127.0.0.1 --port 1883`` (or
``--config '{"host": "127.0.0.1", "port": 0}'``). :mod:`pm.broker` starts and supervises it;
nothing else in the gateway imports amqtt, so asyncio never shares a process with trio.

Protocol with the parent, deliberately tiny:

* stdout carries exactly one line, :data:`READY_PREFIX` followed by a JSON object
  ``{"host": ..., "port": ..., "pid": ...}``, printed once the listener is bound. ``port`` is the
  port actually bound, so ``--port 0`` works.
* stderr carries warnings and errors (amqtt's loggers are set to WARNING).
* SIGTERM or SIGINT shut the broker down cleanly and the process exits 0.
* The process asks the kernel for SIGKILL when its parent thread dies (``PR_SET_PDEATHSIG``),
  so a SIGKILLed gateway leaves no orphan broker holding the port.

Exit status: 0 after a requested shutdown, 2 for bad arguments, 3 if the broker cannot start
(port in use, bad host), 4 if the parent died before the death signal was armed.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

READY_PREFIX = "pm-broker-ready "

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_START_FAILED = 3
EXIT_ORPHANED = 4

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

# amqtt logs one debug f-string per message (several per non-matching subscription filter in
# Broker._run_broadcast); the f-string is still built, but at WARNING nothing is emitted.
# "transitions" is the state-machine library amqtt uses for broker and session states.
_QUIET_LOGGERS = ("amqtt", "transitions")

# Only an auth plugin: amqtt refuses every client (CONNACK 5) when no auth plugin answers, and
# its default EventLogger/PacketLogger/BrokerSys plugins roughly halve throughput.
_PLUGINS: dict[str, dict[str, Any]] = {
    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
}


def set_parent_death_signal(signum: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent dies.

    The kernel ties this to the parent *thread* that forked us, not the parent process (see
    ``prctl(2)``): the parent must fork from a thread that lives as long as it wants the broker
    (pm.broker forks from the trio thread for this reason).

    Args:
      signum: the signal to receive; SIGKILL because a dead parent cannot wait for a clean stop.

    Error handling: raises :class:`OSError` if ``prctl`` fails (not Linux, or refused).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")


def amqtt_config(
    host: str,
    port: int,
    *,
    auth: dict[str, str] | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> dict[str, Any]:
    """Build the amqtt broker configuration: one TCP listener, its auth plugins, nothing else.

    Args:
      host: address to bind; IPv6 literals are written without brackets because amqtt's
        ``Broker._split_bindaddr_port`` keeps the brackets, which ``getaddrinfo`` rejects, while
        its ``rsplit(":", 1)`` handles ``::1:1883`` correctly.
      port: port to bind; 0 lets the kernel choose.
      auth: ``None`` for anonymous access, else the keyword arguments of
        :func:`pm._amqtt_auth.plugin_config` (device identity and topic ACL).
      certfile, keyfile: PEM certificate chain and private key; both given, the listener
        speaks only TLS (amqtt's ``_create_ssl_context``: client certificates optional).

    Returns:
      A dictionary for ``amqtt.broker.Broker(config=...)``.
    """
    # max_connections 0 means no semaphore on accept (amqtt: > 0 enables one).
    listener: dict[str, Any] = {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}
    if certfile and keyfile:
        listener.update(ssl=True, certfile=certfile, keyfile=keyfile)
    if auth is None:
        plugins = dict(_PLUGINS)
    else:
        from pm._amqtt_auth import plugin_config

        plugins = plugin_config(**auth)
    return {"listeners": {"default": listener}, "plugins": plugins}


def bound_endpoint(broker: Any) -> tuple[str, int]:
    """Return the (host, port) the broker's TCP listener actually bound.

    amqtt keeps no record of the bound port, so we read it from the asyncio server's sockets;
    this is the only place that touches amqtt internals (``Broker._servers``, ``Server.instance``).

    Args:
      broker: a started ``amqtt.broker.Broker``.

    Returns:
      The first listening socket's address. With port 0 and a host name that resolves to both
      IPv4 and IPv6, each socket gets its own port; the first is reported.

    Error handling: raises :class:`RuntimeError` if no TCP listener socket is found.
    """
    for server in broker._servers.values():
        sockets = getattr(server.instance, "sockets", None) or ()
        for sock in sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                address = sock.getsockname()
                return str(address[0]), int(address[1])
    raise RuntimeError("amqtt started without a bound TCP listener")


class PubackTimeoutFilter(logging.Filter):
    """Counts amqtt's PUBACK-wait timeouts instead of logging each one with a traceback.

    amqtt waits at most 5 s (hard-coded in ``ProtocolHandler._handle_qos1_message_flow``) for
    the PUBACK of each message it sends; under a burst of thousands of answers its own event
    loop is that far behind, so the wait expires although the message was sent and the client
    acknowledges it moments later. Each expiry logged three records (a warning, a traceback,
    "unknown pending message") that the gateway parsed and re-logged: measured with py-spy,
    ~5% of the gateway's CPU during a 10k-task job, plus the broker's own formatting.
    :meth:`summary` gives one line instead, written every :data:`SUMMARY_INTERVAL` seconds.
    """

    SUMMARY_INTERVAL = 10.0

    def __init__(self) -> None:
        super().__init__()
        self.timeouts = 0
        self._reported = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        error = record.exc_info[1] if record.exc_info else None
        if message.startswith("Timeout waiting for PUBACK") or (
            isinstance(error, TimeoutError) and "PUBACK" in str(error)
        ):
            self.timeouts += record.exc_info is None  # count the warning, drop both
            return False
        # The late PUBACK of a message whose wait already expired.
        return not message.startswith("Received PUBACK for unknown pending message")

    def summary(self) -> str | None:
        new = self.timeouts - self._reported
        self._reported = self.timeouts
        if not new:
            return None
        return (
            f"{new} PUBACK waits exceeded amqtt's fixed 5 s while the broker was behind "
            "(messages were sent; late acknowledgements ignored)"
        )


_puback_timeouts = PubackTimeoutFilter()


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _resident_bytes() -> int:
    """This process's resident memory (one read of ``/proc/self/statm``); 0 if unknown."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


class GcPacer:
    """Keeps CPython's full (generation 2) collections from rescanning every session.

    Each amqtt connection holds ~330 GC-tracked objects (its ``Session`` with a
    ``transitions`` state machine, handler, tasks, queues): ~3.3 million with 10,000 devices.
    CPython 3.11 runs a full collection whenever the objects that reached the oldest generation
    grew by 25%, and each one walks all of them: measured with ``gc.callbacks`` while 10,000
    devices connected, 17 full collections took ~11 s of the 48 s, the last ones 1.5-3 s each,
    and one that lands during traffic stalls every message for seconds (a 10,000-connection
    round-trip run that most likely met one fell from ~110 to ~20 rt/s, its broker CPU per
    round trip tripled).

    After each full collection the survivors are frozen (``gc.freeze``: moved to the permanent
    generation, which no collection walks), so the next full collection only walks what was
    created since. Freezing does not stop reference counting (which frees most garbage), only
    the cycle collector; the cyclic garbage that matters is a closed connection's session and
    handler (state machines refer back to their model). So everything is unfrozen, hence
    walked by the next full collection, once ``closed_connections()`` grew by half the
    connections open at the last walk of everything (at least :attr:`min_closed`), or, for
    cyclic garbage of any other origin, once the resident memory exceeds :attr:`growth` times
    what the last walk left plus :attr:`CONNECTION_BYTES` per connection opened since (a
    heap-growth pacer: garbage stays below the size of the live heap). A steady fleet costs no
    full walk at all. (The frozen set's size is not a usable signal: ``gc.get_freeze_count``
    walks the whole list: 100-200 ms for 3 million objects on a busy machine.)
    """

    CONNECTION_BYTES = 64 * 1024  # resident memory of an idle connection: ~54 KiB measured

    def __init__(
        self,
        closed_connections: Callable[[], int],
        open_connections: Callable[[], int],
        *,
        growth: float = 2.0,
        min_closed: int = 1000,
    ) -> None:
        self._closed = closed_connections
        self._open = open_connections
        self.growth = growth
        self.min_closed = min_closed
        self._closed_at_walk = 0
        self._open_at_walk = 0
        self._resident_at_walk = 0
        self._walked_everything = True  # nothing is frozen yet
        self.full_walks = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase != "stop" or info["generation"] != 2:
            return
        # gc callbacks run once the collection is complete: moving generations is safe here.
        gc.freeze()
        open_now = self._open()
        if self._walked_everything:
            self._closed_at_walk = self._closed()
            self._open_at_walk = open_now
            self._resident_at_walk = _resident_bytes()
            self._walked_everything = False
            self.full_walks += 1
            return
        closed = self._closed() - self._closed_at_walk
        expected = self._resident_at_walk + self.CONNECTION_BYTES * max(
            0, open_now - self._open_at_walk
        )
        if (
            closed > max(self.min_closed, self._open_at_walk // 2)
            or _resident_bytes() > self.growth * expected
        ):
            # The next full collection comes soon (its trigger is relative to the objects
            # the last one walked, now few) and walks everything.
            gc.unfreeze()
            self._walked_everything = True

    def install(self) -> None:
        gc.callbacks.append(self)


async def _report_puback_timeouts() -> None:
    log = logging.getLogger("pm.broker.child")
    while True:
        await asyncio.sleep(PubackTimeoutFilter.SUMMARY_INTERVAL)
        line = _puback_timeouts.summary()
        if line is not None:
            log.warning(line)


def _quiet_logging() -> None:
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s broker[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("amqtt.broker", "amqtt.mqtt.protocol.handler"):
        logging.getLogger(name).addFilter(_puback_timeouts)


async def serve(
    host: str,
    port: int,
    *,
    stock: bool = False,
    auth: dict[str, str] | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> int:
    """Run the broker until SIGTERM/SIGINT; print the ready line once bound.

    Args:
      host: address to bind.
      port: port to bind, 0 for any.
      stock: run amqtt's own ``Broker`` instead of :class:`PuppetmasterBroker`; only the
        benchmarks use it, to measure what our fixes change.
      auth, certfile, keyfile: see :func:`amqtt_config`.

    Returns:
      The process exit status (:data:`EXIT_OK` or :data:`EXIT_START_FAILED`).

    Error handling: a start failure (``BrokerError``: port in use, bad address) is logged on
    stderr and turned into :data:`EXIT_START_FAILED`; any other exception propagates (and
    Python exits 1 with a traceback on stderr, which the parent logs).
    """
    # Imported here so that argument errors and prctl run before the slow amqtt import.
    from amqtt.broker import Broker
    from amqtt.errors import BrokerError

    from pm._amqtt_broker import PuppetmasterBroker

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    config = amqtt_config(host, port, auth=auth, certfile=certfile, keyfile=keyfile)
    if stock:
        broker: Broker = Broker(config, loop=loop)
    else:
        broker = PuppetmasterBroker(config, loop=loop, authenticate_first=auth is not None)
        GcPacer(broker.connections_closed, broker.connections_open).install()
    if auth is None:
        # amqtt's string-configured plugin loading (PluginManager._load_str_plugins) forces
        # topic filtering on even with no topic plugin, costing a coroutine call per publish
        # and per delivery; there is no config key for it, so switch it off here. With auth
        # the topic ACL plugin needs it.
        broker.plugins_manager._is_topic_filtering_enabled = False
    try:
        await broker.start()
    except BrokerError as error:
        cause = error.__cause__ or error
        logging.getLogger("pm.broker.child").error("cannot start broker: %s", cause)
        return EXIT_START_FAILED

    bound_host, bound_port = bound_endpoint(broker)
    ready = {"host": bound_host, "port": bound_port, "pid": os.getpid()}
    sys.stdout.write(READY_PREFIX + json.dumps(ready) + "\n")
    sys.stdout.flush()

    reporter = asyncio.ensure_future(_report_puback_timeouts())
    await stop.wait()
    reporter.cancel()
    await broker.shutdown()
    return EXIT_OK


class _Arguments(NamedTuple):
    host: str
    port: int
    parent: int | None
    stock: bool
    auth: dict[str, str] | None
    certfile: str | None
    keyfile: str | None


def _parse_arguments(argv: Sequence[str]) -> _Arguments:
    parser = argparse.ArgumentParser(prog="python -m pm._broker_process")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--config", help='JSON object, e.g. {"host": "127.0.0.1", "port": 0}')
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit at once unless this process is still our parent",
    )
    parser.add_argument(
        "--stock-amqtt",
        action="store_true",
        help="amqtt's own Broker, without our fixes (benchmarks only)",
    )
    parser.add_argument(
        "--auth",
        help="JSON object: pm._amqtt_auth.plugin_config arguments (gateway password: "
        "environment variable PM_BROKER_GATEWAY_PASSWORD)",
    )
    parser.add_argument("--certfile", help="PEM certificate chain: the listener speaks TLS")
    parser.add_argument("--keyfile", help="PEM private key of --certfile")
    arguments = parser.parse_args(argv)
    if (arguments.certfile is None) != (arguments.keyfile is None):
        parser.error("--certfile and --keyfile go together")
    host: str = arguments.host
    port: int = arguments.port
    if arguments.config is not None:
        try:
            config = json.loads(arguments.config)
            host = str(config.get("host", host))
            port = int(config.get("port", port))
        except (ValueError, TypeError, AttributeError) as error:
            parser.error(f"--config is not a JSON object with host/port: {error}")
    if not 0 <= port <= 65535:
        parser.error(f"--port {port} is out of range")
    auth: dict[str, str] | None = None
    if arguments.auth is not None:
        try:
            auth = {str(key): str(value) for key, value in json.loads(arguments.auth).items()}
        except (ValueError, AttributeError) as error:
            parser.error(f"--auth is not a JSON object: {error}")
    return _Arguments(
        host,
        port,
        arguments.parent_pid,
        arguments.stock_amqtt,
        auth,
        arguments.certfile,
        arguments.keyfile,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: arm the parent-death signal, parse arguments, run the broker.

    Args:
      argv: arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns:
      The exit status (see the module docstring).

    Error handling: bad arguments exit 2 through argparse; a parent given by ``--parent-pid``
    that is already gone gives :data:`EXIT_ORPHANED`; if ``prctl`` is unavailable the
    broker still runs (a warning says an orphan is possible).
    """
    arguments = _parse_arguments(sys.argv[1:] if argv is None else argv)
    parent = arguments.parent
    try:
        set_parent_death_signal(signal.SIGKILL)
    except OSError as error:
        print(
            f"broker: warning: no parent-death signal, may outlive its parent: {error}",
            file=sys.stderr,
        )
    # The parent may have died before prctl ran; then no signal will ever come.
    if parent is not None and os.getppid() != parent:
        return EXIT_ORPHANED
    _quiet_logging()
    return asyncio.run(
        serve(
            arguments.host,
            arguments.port,
            stock=arguments.stock,
            auth=arguments.auth,
            certfile=arguments.certfile,
            keyfile=arguments.keyfile,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
