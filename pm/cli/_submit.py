"""``pm submit``: one batch entry (one command to many devices), or a whole job document
(``--file``), as a new job; with ``--dry-run``, only what the job would do."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import trio

from ..protocol import InvalidDeviceId
from ..simulator import read_device_ids
from ._arguments import (
    HelpFormatter,
    gateway_ssl_context,
    gateway_token,
    gateway_url,
    url_options,
)
from ._console import stdout_console
from ._errors import EXIT_OK, CliError
from ._gateway_client import GatewayClient
from ._job_options import add_options, add_timeout_options, apply_options, read_job_file
from ._watch import watch_job


def parse_data(text: str) -> dict[str, Any]:
    """``--data``: a JSON object, or ``@FILE`` holding one.

    Error handling: raises :class:`CliError` for an unreadable file, malformed JSON, or JSON
    that is not an object (the gateway would refuse it with a 400 anyway; saying it here
    points at the right flag).
    """
    source = "--data"
    if text.startswith("@"):
        source = f"--data file {text[1:]}"
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as error:
            raise CliError(f"cannot read {source}: {error.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(f"{source} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise CliError(f"{source} must be a JSON object like '{{\"key\": 1}}', got {text!r}")
    return data


def destinations(args: argparse.Namespace) -> list[str]:
    """``--to`` ids in order, then those of every ``--to-file``."""
    devices: list[str] = list(args.to or [])
    for path in args.to_file or []:
        try:
            devices.extend(read_device_ids(path))
        except OSError as error:
            raise CliError(f"cannot read --to-file {path}: {error.strerror}") from None
        except InvalidDeviceId as error:
            raise CliError(f"--to-file {path}: {error}") from None
    if not devices:
        raise CliError("no destination: give --to ID (repeatable) or --to-file FILE")
    return devices


def job_request(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /jobs`` body; the gateway validates it (and names what is wrong)."""
    if args.file is not None:
        if args.resource is not None or args.to or args.to_file or args.data is not None:
            raise CliError("--file holds the whole batch: give no --resource, --to or --data")
        return apply_options(read_job_file(args.file), args)
    if args.resource is None:
        raise CliError("no command: give --resource (and --to), or --file job.json")
    entry: dict[str, Any] = {
        "method": args.method,
        "resource": args.resource,
        "data": parse_data(args.data) if args.data is not None else {},
        "__destination": destinations(args),
    }
    if args.task_timeout is not None:
        entry["timeout"] = args.task_timeout
    return apply_options({"batch": [entry]}, args)


def print_plan(plan: dict[str, Any]) -> None:
    """A dry run's answer, in words."""
    where = plan["destinations"]
    starts = f", first send at {plan['startsAt']}" if plan.get("startsAt") else ""
    print(
        f"dry run: {plan['totalCount']} task(s) to {plan['deviceCount']} device(s) "
        f"({where['online']} online, {where['offline']} offline, {where['unknown']} unknown); "
        f"at least {plan['predictedDuration']:g} s{starts}\n  ({plan['basis']})",
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    url = gateway_url(args)
    body = job_request(args)
    ssl_context = gateway_ssl_context(args)
    params = {"dryRun": "true"} if args.dry_run else {}
    with GatewayClient(url, token=gateway_token(args), ssl_context=ssl_context) as gateway:
        job = gateway.request("POST", "/jobs", json=body, params=params).json()
    if args.dry_run:
        if args.json:
            print(json.dumps(job, indent=2), flush=True)
        else:
            print_plan(job)
        return EXIT_OK
    console = stdout_console()
    if args.json:
        # Plain print: rich would re-wrap long lines and break the JSON for jq.
        print(json.dumps(job, indent=2), flush=True)
    else:
        # The bare id on stdout composes: `pm watch $(pm submit ...)`; the prose goes to stderr.
        print(job["id"], flush=True)
        if not args.watch:
            print(
                f"submitted job {job['id']}: {job['totalCount']} task(s); "
                f"follow it with `pm watch {job['id']}`",
                file=sys.stderr,
            )
    if args.watch:
        return trio.run(watch_job, url, job["id"], console, gateway_token(args), ssl_context)
    return EXIT_OK


EPILOG = """\
examples:
  pm submit --method post --resource /system/reboot --to 02:00:00:00:00:00 --watch
  pm submit --resource /system/status --to aa --to bb --data '{"verbose": true}'
  pm submit --method put --resource /network/ntp --data @ntp.json --to-file fleet.txt \\
            --task-timeout 30 --timeout 600
  pm watch $(pm submit --resource /system/status --to-file fleet.txt)
  pm submit --resource /system/firmware --to-file fleet.txt --max-in-flight 50 --rate 600 \\
            --ramp 2:100:400 --abort-at 5%:error:cancel:min=20 --retries 2 --dry-run
  pm submit --file job.json --window '0 2 * * *;120;Europe/Berlin' --end-at 2026-12-24T00:00:00Z

--to-file holds one device id per line; blank lines and # comments are ignored.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "submit",
        parents=[url_options()],
        help="send one command to one or more devices as a new job",
        description=(
            "Submit a job: one Sanji command sent to every destination (one task per device). "
            "Prints the job id; with --watch, follows the job like `pm watch`."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--method",
        default="get",
        type=str.lower,
        choices=["get", "post", "put", "delete"],
        help="the Sanji method (default: %(default)s)",
    )
    parser.add_argument(
        "--resource",
        help="the Sanji resource, starting with / (/system/reboot); required unless --file",
    )
    parser.add_argument(
        "--file",
        metavar="JOB.json",
        help="a whole POST /jobs document (several batch entries, any option); the options "
        "below are set on top of it",
    )
    parser.add_argument(
        "--data", metavar="JSON", help="the command's data: a JSON object, or @FILE (default: {})"
    )
    parser.add_argument(
        "--to",
        action="append",
        metavar="ID",
        help="a destination device id (MAC or name); repeat for more devices",
    )
    parser.add_argument(
        "--to-file",
        action="append",
        metavar="FILE",
        help="a file of destination ids, one per line (# comments allowed); repeatable",
    )
    add_timeout_options(parser)
    add_options(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="send nothing: show the task and device counts, presence and predicted duration",
    )
    parser.add_argument("--watch", action="store_true", help="follow the job until it ends")
    parser.add_argument("--json", action="store_true", help="print the created job as JSON")
    parser.set_defaults(run=run)
