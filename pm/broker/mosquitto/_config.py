"""The mosquitto binary and the configuration the embedded mosquitto runs with."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

_SEARCH_PATH = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto(configured: str = "") -> str | None:
    """The mosquitto binary: ``configured`` (``broker.mosquitto_binary``) if given and
    executable, else on ``PATH`` or where Debian puts it (``/usr/sbin``); ``None`` if missing."""
    if configured:
        return shutil.which(configured)
    found = shutil.which("mosquitto")
    if found is not None:
        return found
    return next((path for path in _SEARCH_PATH if Path(path).exists()), None)


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "root" if os.getuid() == 0 else str(os.getuid())


# What presence reads from the log (pm.broker.mosquitto._presence_log): connections, their
# end, subscriptions; timestamps off so each line is only mosquitto's message.
PRESENCE_LOGGING = (
    "log_type notice\n"
    "log_type subscribe\n"
    "log_type unsubscribe\n"
    "connection_messages true\n"
    "log_timestamp false\n"
)


def mosquitto_config(host: str, port: int, *, presence: bool = False) -> str:
    """mosquitto.conf for the embedded broker: what the gateway needs, nothing persisted.

    Args:
      host: address to bind.
      port: port to bind (not 0: mosquitto cannot report the port it picked).
      presence: also log connections and subscriptions, for the child to read presence from.
    """
    return (
        f"listener {port} {host}\n"
        "allow_anonymous true\n"
        # Without it QoS 1 request/response waits on Nagle + delayed ACK (docs/broker.md: ~22
        # round trips/s).
        "set_tcp_nodelay true\n"
        # The default 1000 per client drops the tail of a burst: the gateway's connection
        # receives one answer per device at once.
        "max_queued_messages 1000000\n"
        # The gateway keeps its own in-flight window; mosquitto's default of 20 throttles it.
        "max_inflight_messages 0\n"
        # Sessions are clean and retained re-sends are the gateway's to redo after a restart.
        "persistence false\n"
        # Run as root, mosquitto switches to user "mosquitto"; changing credentials clears
        # PR_SET_PDEATHSIG, and an orphan would keep the port. Staying our user keeps it.
        f"user {_user_name()}\n"
        # stderr is unbuffered: a line is read the moment mosquitto acts (stdout is buffered).
        "log_dest stderr\n"
        "log_type error\n"
        "log_type warning\n"
    ) + (PRESENCE_LOGGING if presence else "")
