"""``pm``'s entry point: the argument parser and the one place errors become exit statuses."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..config import ConfigError
from . import _bench, _control, _devices, _jobs, _serve, _simulate, _submit, _watch
from ._arguments import HelpFormatter
from ._errors import EXIT_INTERRUPTED, EXIT_USAGE, CliError

EPILOG = """\
getting started (three terminals):
  pm serve                      # gateway on http://127.0.0.1:8080, MQTT broker on :1883
  pm simulate                   # 10 simulated devices; prints their ids
  pm submit --method post --resource /system/reboot --to 02:00:00:00:00:00 --watch

Client commands find the gateway with --url, else $PM_URL, else http://127.0.0.1:8080.
Exit status: 0 success, 1 a watched job ended with errors, 2 usage or connection errors.
Run `pm COMMAND --help` for a command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pm",
        description="puppetmaster: dispatch Sanji commands to fleets of IoT devices over MQTT.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (_serve, _submit, _watch, _control, _jobs, _simulate, _devices, _bench):
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``pm`` command; returns its exit status (the console script exits with it).

    Error handling: :class:`CliError` and :class:`~pm.config.ConfigError` print their message
    to stderr and give their status (2 by default); Ctrl-C gives 130 without a traceback.
    Anything else is a bug and keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except (CliError, ConfigError) as error:
        message = error.message if isinstance(error, CliError) else str(error)
        print(f"pm {args.command}: {message}", file=sys.stderr)
        return error.status if isinstance(error, CliError) else EXIT_USAGE
    except KeyboardInterrupt:
        # Only the client commands get here; serve and simulate turn SIGINT into a clean stop.
        if args.command in ("watch", "submit"):
            print("\ninterrupted; the job keeps running (`pm watch JOB` resumes)", file=sys.stderr)
        elif args.command == "bench":
            print("\ninterrupted", file=sys.stderr)  # and the job cancelled, said on stdout
        return EXIT_INTERRUPTED
    return status
