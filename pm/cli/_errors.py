"""What a command raises when it cannot do its job, and the exit statuses ``pm`` uses."""

from __future__ import annotations

# Exit statuses, the same for every command so scripts can rely on them.
EXIT_OK = 0
# The command ran, but what it reports went wrong: a watched job ended with errors.
EXIT_FAILED = 1
# The command could not run: bad arguments or config, gateway unreachable, request refused.
# argparse uses 2 for usage errors too.
EXIT_USAGE = 2
# Interrupted by Ctrl-C, as shells report a SIGINT death (128 + 2).
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure the user can act on: :func:`pm.cli.main` prints the message, no traceback.

    Args:
      message: one sentence saying what went wrong and, where possible, what to do.
      status: the exit status (:data:`EXIT_USAGE` unless said otherwise).
    """

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def unreachable(url: str) -> CliError:
    """The error for a gateway that refuses (or never answers) the TCP connection."""
    return CliError(f"cannot reach the gateway at {url}: is `pm serve` running?")
