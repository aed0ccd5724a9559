"""Supervision of the embedded MQTT broker: start a child, wait for ready, restart it.

:func:`run_embedded_broker` starts ``python -m pm.broker.amqtt`` (``broker.engine =
"amqtt"``) or ``python -m pm.broker.mosquitto`` (``"mosquitto"``: a wrapper that runs the
mosquitto binary with a generated config), waits for its ready line, hands an
:class:`EmbeddedBroker` to ``nursery.start`` and then keeps the broker alive until its scope is
cancelled.

Why a child process and not a thread or the gateway's own loop: amqtt is asyncio and
CPU-heavy per message (it scans every subscription filter per publish). In a child it has its
own core and no GIL contention with the trio loop; a thread was measured ~25-30% slower with
twice the trio scheduling lag (docs/broker.md). The child costs little to start (measured on
2 cores: fork 0.3-0.5 ms, ready line 120-140 ms after fork, SIGTERM to exit ~27 ms).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from pm.config import BrokerConfig

from ._arguments import BrokerAuth, child_command, child_environment, tls_files
from ._child import STOP_TIMEOUT, Child
from ._protocol import ReadyLine, describe_exit
from ._restart import RestartBackoff
from ._state import BrokerStartError, EmbeddedBroker

logger = logging.getLogger("pm.broker")

START_TIMEOUT = 10.0  # seconds from fork to ready line; the child needs ~0.15 s


async def _run_child(
    broker: EmbeddedBroker,
    port: int,
    start_timeout: float,
    on_ready: Callable[[ReadyLine], None],
    mosquitto_binary: str = "",
) -> int:
    """Start one child, call ``on_ready`` once it is ready, return its status when it exits.

    Error handling: raises :class:`BrokerStartError` if it does not become ready; on
    cancellation the child is stopped (shielded) before ``Cancelled`` propagates.
    """
    child = Child(
        child_command(
            broker.host,
            port,
            broker.engine,
            broker.auth,
            broker.tls,
            mosquitto_binary,
            presence=broker.presence,
        ),
        child_environment(broker.auth),
    )
    broker._process = child.process
    broker.pid = child.pid
    try:
        failure: BrokerStartError | None = None
        status = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child.log_stderr)
            # Failures are raised after the nursery so callers get BrokerStartError itself,
            # not an ExceptionGroup around it.
            ready: ReadyLine | None = None
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
                child.mark_ready()
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
    child: Child, host: str, port: int, start_timeout: float, exited: bool
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
    # The last lines say why (the child's own summary comes last); they were held, not logged.
    tail = "\n".join(child.stderr_tail) or "(no stderr output)"
    if child.failure_reason is not None:
        # The child said why in words: that is the first line, the one `pm serve` prints.
        return BrokerStartError(
            f"embedded broker on {host}:{port} could not start: {child.failure_reason} "
            f"({describe_exit(status)}); stderr:\n{tail}",
            reason=child.failure_reason,
        )
    why = (
        "exited before it was ready"
        if exited
        else (f"printed no ready line within {start_timeout:g} s")
    )
    return BrokerStartError(
        f"embedded broker on {host}:{port} {why} ({describe_exit(status)}); stderr:\n{tail}"
    )


async def run_embedded_broker(
    config: BrokerConfig,
    *,
    auth: BrokerAuth | None = None,
    presence: tuple[str, str] | None = None,
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
      auth: who may connect (:func:`pm.broker.broker_auth`): the gateway's reserved identity,
        with ``broker.auth`` also device identity and topic ACL; ``None``: anyone (tests and
        benchmarks of the bare broker).
        ``config.certfile``/``keyfile`` set: the listener speaks only TLS (amqtt only).
      presence: the ``(request, status)`` topic templates: the child (either engine) then
        publishes a retained ``online``/``offline`` on a device's status topic when a client's
        subscription to its request topic starts/ends (docs/protocol.md, presence; mosquitto's
        read from its log: docs/broker.md).
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
    broker = EmbeddedBroker(
        config.host, config.port, config.engine, auth, tls_files(config), presence
    )
    backoff = RestartBackoff()
    handed_over = False

    while True:
        ready_at: float | None = None

        def on_ready(ready: ReadyLine) -> None:
            nonlocal ready_at, handed_over
            ready_at = trio.current_time()
            if not handed_over:
                # Keep the port actually bound (port 0) for every restart.
                broker.port = ready.port
                handed_over = True
                task_status.started(broker)

        try:
            status = await _run_child(
                broker, broker.port, start_timeout, on_ready, config.mosquitto_binary
            )
            reason = describe_exit(status)
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
