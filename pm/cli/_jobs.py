"""``pm jobs``: the gateway's jobs as a table, newest first."""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from typing import Any

from rich import box
from rich.table import Table

from ..outcomes import JOB_OUTCOMES
from ..schemas import JOB_STATUSES
from ._arguments import (
    HelpFormatter,
    gateway_ssl_context,
    gateway_token,
    gateway_url,
    positive_int,
    url_options,
)
from ._console import stdout_console
from ._errors import EXIT_OK
from ._gateway_client import GatewayClient

# Columns used when stdout is not a terminal and $COLUMNS is unset.
PIPE_WIDTH = 120

STATUS_STYLES = {
    "pending": "dim",
    "dispatching": "cyan",
    "resolved": "green",
    "timeout": "red",
    "cancelled": "yellow",
}


def local_time(timestamp: str | None) -> str:
    """The gateway's UTC ISO timestamp in the reader's local time, to the second."""
    if timestamp is None:
        return "-"
    try:
        return datetime.fromisoformat(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return timestamp


def jobs_table(jobs: list[dict[str, Any]], total: int | None) -> Table:
    shown = f"{len(jobs)} of {total} jobs" if total is not None else f"{len(jobs)} jobs"
    table = Table(box=box.SIMPLE_HEAD, caption=shown, caption_justify="left")
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("progress", justify="right", no_wrap=True)
    table.add_column("done/total", justify="right", no_wrap=True)
    table.add_column("errors", justify="right", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    # The times give way first on a narrow terminal (80 columns cannot hold every column on
    # one line): they wrap between date and time, the other columns stay whole.
    table.add_column("created", min_width=10)
    table.add_column("finished", min_width=10)
    for job in jobs:
        errors = job["errorCount"]
        table.add_row(
            str(job["id"]),
            f"[{STATUS_STYLES.get(job['status'], '')}]{job['status']}[/]",
            f"{job['progress']}%",
            f"{job['doneCount']}/{job['totalCount']}",
            f"[red]{errors}[/]" if errors else "0",
            job.get("outcome") or "-",
            local_time(job["createdAt"]),
            local_time(job["finishAt"]),
        )
    return table


def run(args: argparse.Namespace) -> int:
    params: dict[str, str | int] = {"limit": args.limit}
    if args.status is not None:
        params["status"] = args.status
    if args.outcome is not None:
        params["outcome"] = args.outcome
    with GatewayClient(
        gateway_url(args), token=gateway_token(args), ssl_context=gateway_ssl_context(args)
    ) as gateway:
        response = gateway.request("GET", "/jobs", params=params)
    jobs = response.json()
    if args.json:
        print(json.dumps(jobs, indent=2), flush=True)
        return EXIT_OK
    total_header = response.headers.get("X-Total-Count")
    total = int(total_header) if total_header and total_header.isdigit() else None
    console = stdout_console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Rich assumes 80 columns for pipes, too narrow for seven columns: it would squeeze
        # the id column away. Files and pipes have no width, so give them room.
        console.width = PIPE_WIDTH
    if not jobs:
        which = " ".join(filter(None, (args.status, args.outcome)))
        console.print(f"no {which} jobs" if which else "no jobs")
        return EXIT_OK
    console.print(jobs_table(jobs, total))
    return EXIT_OK


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "jobs",
        parents=[url_options()],
        help="list jobs, newest first",
        description="List the gateway's jobs, newest first, as a table.",
        epilog="examples:\n  pm jobs\n  pm jobs --status dispatching\n  pm jobs --outcome partial"
        "\n  pm jobs --limit 5 --json",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--status", choices=JOB_STATUSES, help="only jobs in this status")
    parser.add_argument(
        "--outcome",
        choices=JOB_OUTCOMES,
        help="only finished jobs whose tasks all resolved (succeeded), none did (failed), or "
        "some did (partial)",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=20,
        metavar="N",
        help="show at most N jobs (default: %(default)s; the gateway allows up to 1000)",
    )
    parser.add_argument("--json", action="store_true", help="print the jobs as JSON")
    parser.set_defaults(run=run)
