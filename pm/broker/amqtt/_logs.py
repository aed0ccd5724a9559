"""Logging of the amqtt child: amqtt quiet, its PUBACK-timeout records counted, not logged."""

from __future__ import annotations

import asyncio
import logging
import sys

from ._handler import PUBACK_TIMEOUT

# amqtt logs one debug f-string per message (several per non-matching subscription filter in
# Broker._run_broadcast); the f-string is still built, but at WARNING nothing is emitted.
# "transitions" is the state-machine library amqtt uses for broker and session states.
_QUIET_LOGGERS = ("amqtt", "transitions")


class PubackTimeoutFilter(logging.Filter):
    """Counts amqtt's PUBACK-wait timeouts instead of logging each one with a traceback.

    amqtt waited at most 5 s (hard-coded in ``ProtocolHandler._handle_qos1_message_flow``) for
    the PUBACK of each message it sends; under a burst of thousands of answers its own event
    loop was that far behind, so the wait expired although the message was sent and the client
    acknowledged it moments later (our handler now waits ``PUBACK_TIMEOUT``,
    :mod:`pm.broker.amqtt._handler`; a client can still exceed that). Each expiry logged three
    records (a warning, a traceback, "unknown pending message") that the gateway parsed and
    re-logged: measured with py-spy, ~5% of the gateway's CPU during a 10k-task job, plus the
    broker's own formatting. :meth:`summary` gives one line instead, written every
    :data:`SUMMARY_INTERVAL` seconds and at the broker's stop.
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
            f"{new} PUBACK waits exceeded {PUBACK_TIMEOUT:g} s "
            "(messages were sent; late acknowledgements ignored)"
        )


_puback_timeouts = PubackTimeoutFilter()


async def report_puback_timeouts() -> None:
    """Log the PUBACK-wait timeouts every :data:`PubackTimeoutFilter.SUMMARY_INTERVAL`."""
    while True:
        await asyncio.sleep(PubackTimeoutFilter.SUMMARY_INTERVAL)
        log_puback_timeouts()


def log_puback_timeouts() -> None:
    """One line for the timeouts since the last one, if any: also at the broker's stop, so
    that none goes unreported."""
    line = _puback_timeouts.summary()
    if line is not None:
        logging.getLogger("pm.broker.child").warning(line)


def quiet_logging() -> None:
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s broker[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("amqtt.broker", "amqtt.mqtt.protocol.handler"):
        logging.getLogger(name).addFilter(_puback_timeouts)
    logging.getLogger("amqtt.broker").addFilter(drop_start_traceback)


def drop_start_traceback(record: logging.LogRecord) -> bool:
    """Drops amqtt's 18-line traceback for a broker that cannot start (a port in use): the
    child reports the cause in one line (:func:`pm.broker._protocol.cannot_listen`)."""
    return not (isinstance(record.msg, str) and record.msg.startswith("Broker startup failed"))
