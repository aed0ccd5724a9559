"""``pm submit``'s rollout, schedule and expiry options, and ``--file``: how they become the
``POST /jobs`` body.

Pure (no I/O but reading ``--file``): each option sets one field of the job document, the
gateway validates the document and names what is wrong. The short forms are parsed here so
that a typo is refused before anything is sent, naming the option.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from ._arguments import positive_float, positive_int
from ._errors import CliError

ABORT_ON = ("error", "timeout", "expired", "failed")
ABORT_ACTIONS = ("pause", "cancel")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


def abort_criterion(text: str) -> dict[str, Any]:
    """``--abort-at 10%[:error|timeout|expired|failed][:pause|cancel][:min=N]`` as one
    ``abort`` entry; unset parts are left to the gateway's defaults.

    Error handling: raises ``argparse.ArgumentTypeError`` naming the part it cannot read.
    """
    percent, *parts = text.split(":")
    matched = _PERCENT.match(percent)
    if matched is None:
        raise argparse.ArgumentTypeError(f"expected a percentage like 10%, got {percent!r}")
    criterion: dict[str, Any] = {"thresholdPercent": float(matched.group(1))}
    for part in parts:
        if part in ABORT_ON and "on" not in criterion:
            criterion["on"] = part
        elif part in ABORT_ACTIONS and "action" not in criterion:
            criterion["action"] = part
        elif part.startswith("min=") and "minSettled" not in criterion:
            criterion["minSettled"] = positive_int(part.removeprefix("min="))
        else:
            raise argparse.ArgumentTypeError(
                f"cannot read {part!r} in {text!r}: expected one of {', '.join(ABORT_ON)}, "
                f"then one of {', '.join(ABORT_ACTIONS)}, then min=N"
            )
    return criterion


def ramp(text: str) -> dict[str, Any]:
    """``--ramp FACTOR:AFTER[:CAP]``: grow window and rate by FACTOR each AFTER resolved
    tasks, the window up to CAP."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected FACTOR:AFTER[:CAP], got {text!r}")
    result: dict[str, Any] = {
        "factor": positive_float(parts[0]),
        "afterSucceeded": positive_int(parts[1]),
    }
    if len(parts) == 3:
        result["maxInFlight"] = positive_int(parts[2])
    return result


def window(text: str) -> dict[str, Any]:
    """``--window 'CRON;MINUTES[;TIMEZONE]'`` (``;`` because cron uses ``,`` and ``/``)."""
    parts = [part.strip() for part in text.split(";")]
    if len(parts) not in (2, 3) or not parts[0]:
        raise argparse.ArgumentTypeError(
            f"expected 'CRON;MINUTES[;TIMEZONE]' like '0 2 * * *;120;Europe/Berlin', got {text!r}"
        )
    result: dict[str, Any] = {"cron": parts[0], "durationMinutes": positive_int(parts[1])}
    if len(parts) == 3:
        result["timezone"] = parts[2]
    return result


def read_job_file(path: str) -> dict[str, Any]:
    """``--file job.json``: a whole ``POST /jobs`` document (several batch entries and any
    option); the other options are applied on top of it."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise CliError(f"cannot read --file {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise CliError(f"--file {path} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("batch"), list):
        raise CliError(f"--file {path} must be a job document: an object with a `batch` list")
    return document


def apply_options(body: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``body`` with the job-level options given on the command line set in it."""
    if args.timeout is not None:
        body["timeout"] = args.timeout
    if args.expires_in is not None:
        body["expiresIn"] = args.expires_in
    if args.priority is not None:
        body["priority"] = args.priority
    rollout = {
        name: value
        for name, value in (
            ("maxInFlight", args.max_in_flight),
            ("maxPerMinute", args.rate),
            ("ramp", args.ramp),
        )
        if value is not None
    }
    if rollout:
        body["rollout"] = {**body.get("rollout", {}), **rollout}
    if args.abort_at:
        body["abort"] = args.abort_at
    if args.retries is not None:
        body["retry"] = {**body.get("retry", {}), "max": args.retries}
    schedule = {
        name: value
        for name, value in (
            ("startAt", args.start_at),
            ("endAt", args.end_at),
            ("endBehavior", args.end_behavior),
            ("windows", args.window),
        )
        if value is not None
    }
    if schedule:
        body["schedule"] = {**body.get("schedule", {}), **schedule}
    return body


def add_timeout_options(parser: argparse.ArgumentParser) -> None:
    """``--timeout`` (the job's, read by :func:`apply_options`) and ``--task-timeout`` (each
    batch entry's, set by the command that builds the entries)."""
    parser.add_argument(
        "--timeout",
        type=positive_float,
        metavar="S",
        help="seconds the whole job may take (default: no job deadline)",
    )
    parser.add_argument(
        "--task-timeout",
        type=positive_float,
        metavar="S",
        help="seconds each device has to answer (default: the gateway's tasks.default_timeout)",
    )


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options above, grouped in ``--help``."""
    group = parser.add_argument_group("rollout, schedule and expiry (all optional)")
    group.add_argument(
        "--max-in-flight", type=positive_int, metavar="N", help="at most N tasks sent at once"
    )
    group.add_argument(
        "--rate", type=positive_float, metavar="R", help="at most R sends a minute (smooth)"
    )
    group.add_argument(
        "--ramp",
        type=ramp,
        metavar="F:K[:CAP]",
        help="grow window and rate by F each K resolved tasks, the window up to CAP",
    )
    group.add_argument(
        "--abort-at",
        type=abort_criterion,
        action="append",
        metavar="P%[:ON][:ACTION][:min=N]",
        help="stop when P%% of settled tasks ended ON (error, timeout, expired, failed) after "
        "at least N settled: ACTION pause or cancel; repeatable",
    )
    group.add_argument(
        "--retries",
        type=int,
        choices=range(0, 11),
        metavar="N",
        help="retry a failed task N times (0-10)",
    )
    group.add_argument(
        "--priority", choices=("high", "normal"), help="high: ahead of normal jobs' tasks"
    )
    group.add_argument(
        "--start-at", metavar="TIME", help="send nothing before TIME (RFC 3339, with offset)"
    )
    group.add_argument("--end-at", metavar="TIME", help="at TIME the job pauses or cancels")
    group.add_argument(
        "--end-behavior", choices=("pause", "cancel"), help="what happens at --end-at"
    )
    group.add_argument(
        "--window",
        type=window,
        action="append",
        metavar="'CRON;MIN[;TZ]'",
        help="send only in windows opening at CRON for MIN minutes (in TZ); repeatable",
    )
    group.add_argument(
        "--expires-in",
        type=positive_float,
        metavar="S",
        help="a task not sent within S seconds of the job's creation ends expired",
    )
