"""``pm pause|resume|cancel|retry JOB``: control a job through ``POST /jobs/{id}/ACTION``.

Each prints the job's state afterwards in one line (``--json``: the job as JSON); ``retry``
prints the new job's id first, so it composes like ``pm submit``: ``pm watch $(pm retry 12)``.

Error handling: an unknown job (404) or a job in the wrong state for the action (409) prints
the gateway's message and exits 2, like every refused request.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..schemas import FINAL_TASK_STATUSES
from ._arguments import HelpFormatter, gateway_ssl_context, gateway_token, gateway_url, url_options
from ._errors import EXIT_OK
from ._gateway_client import GatewayClient

ACTIONS = {
    "pause": "stop sending the job's tasks (those in flight finish)",
    "resume": "send a paused job's tasks again",
    "cancel": "end the job now; it and its tasks stay readable (unlike DELETE)",
    "retry": "a new job, same commands and options, for the tasks that did not resolve",
}
RETRYABLE = sorted(FINAL_TASK_STATUSES)
JSON_REQUEST = {"Content-Type": "application/json"}


def run(args: argparse.Namespace) -> int:
    params = {"status": ",".join(args.status)} if getattr(args, "status", None) else {}
    with GatewayClient(
        gateway_url(args), token=gateway_token(args), ssl_context=gateway_ssl_context(args)
    ) as gateway:
        # No body, but declared JSON like every POST (the gateway's guard against cross-site
        # form posts).
        job: dict[str, Any] = gateway.request(
            "POST", f"/jobs/{args.job}/{args.command}", params=params, headers=JSON_REQUEST
        ).json()
    if args.json:
        print(json.dumps(job, indent=2), flush=True)
    elif args.command == "retry":
        print(job["id"], flush=True)
        print(
            f"job {job['id']} retries {job['totalCount']} task(s) of job {args.job}; "
            f"follow it with `pm watch {job['id']}`",
            file=sys.stderr,
        )
    else:
        print(
            f"job {job['id']} {job['status']}: {job['doneCount']}/{job['totalCount']} done",
            flush=True,
        )
    return EXIT_OK


def add_parser(subparsers: Any) -> None:
    for action, summary in ACTIONS.items():
        parser = subparsers.add_parser(
            action,
            parents=[url_options()],
            help=summary,
            description=f"{action.capitalize()} a job: {summary}.",
            epilog=f"examples:\n  pm {action} 12"
            + ("\n  pm retry 12 --status timeout --status expired" if action == "retry" else ""),
            formatter_class=HelpFormatter,
        )
        parser.add_argument("job", type=int, metavar="JOB", help="the job id")
        if action == "retry":
            parser.add_argument(
                "--status",
                action="append",
                choices=RETRYABLE,
                help="retry the tasks that ended so; repeatable (default: error, timeout, "
                "expired, cancelled)",
            )
        parser.add_argument("--json", action="store_true", help="print the job as JSON")
        parser.set_defaults(run=run)
