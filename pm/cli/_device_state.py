"""``pm devices state`` and ``pm devices show ID``: devices as the running gateway sees them
(``GET /devices``, ``GET /devices/{id}`` and its recent tasks). The credential actions of
``pm devices`` are in :mod:`pm.cli._devices`; they edit a file and need no gateway.

Error handling: as every command that asks the gateway (:mod:`pm.cli._gateway_client`): an
unreachable gateway or a refused request is one line naming why; an unknown device is the
gateway's 404 message.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any
from urllib.parse import quote

from rich import box
from rich.table import Table

from ._arguments import gateway_ssl_context, gateway_token, gateway_url, positive_int
from ._console import stdout_console
from ._errors import EXIT_OK
from ._gateway_client import GatewayClient
from ._jobs import PIPE_WIDTH, local_time

PRESENCE_STYLES = {"online": "green", "offline": "red", "unknown": "dim"}
PRESENCES = tuple(PRESENCE_STYLES)


def devices_table(devices: list[dict[str, Any]], total: int | None) -> Table:
    shown = f"{len(devices)} of {total} devices" if total is not None else f"{len(devices)}"
    table = Table(box=box.SIMPLE_HEAD, caption=shown, caption_justify="left")
    for name in ("id", "presence", "since", "pending", "in flight", "tasks by status"):
        table.add_column(name, no_wrap=name != "tasks by status")
    for device in devices:
        presence = device["presence"]
        since = device["connectedAt"] if presence == "online" else device["disconnectedAt"]
        counts = ", ".join(f"{status} {count}" for status, count in device["counts"].items())
        table.add_row(
            device["id"],
            f"[{PRESENCE_STYLES.get(presence, '')}]{presence}[/]",
            local_time(since),
            str(device["pending"]),
            "-" if device["inFlight"] is None else str(device["inFlight"]),
            counts or "-",
        )
    return table


def tasks_table(tasks: list[dict[str, Any]], total: int | None) -> Table:
    shown = f"{len(tasks)} of {total} tasks, newest first" if total is not None else ""
    table = Table(box=box.SIMPLE_HEAD, caption=shown, caption_justify="left")
    for name in ("task", "job", "status", "method", "resource", "created", "finished"):
        table.add_column(name, no_wrap=True)
    for task in tasks:
        state = task["__task"]
        table.add_row(
            str(task["id"]),
            str(task["jobId"]),
            state["status"],
            task["method"],
            task["resource"],
            local_time(state["createdAt"]),
            local_time(state["finishAt"]),
        )
    return table


def _total(headers: Any) -> int | None:  # noqa: ANN401 - httpx's Headers
    value = headers.get("X-Total-Count")
    return int(value) if value and value.isdigit() else None


def run_state(args: argparse.Namespace) -> int:
    params: dict[str, str | int] = {"limit": args.limit}
    if args.presence is not None:
        params["presence"] = args.presence
    if args.prefix:
        params["q"] = args.prefix
    with _gateway(args) as gateway:
        response = gateway.request("GET", "/devices", params=params)
    devices = response.json()
    if args.json:
        print(json.dumps(devices, indent=2), flush=True)
        return EXIT_OK
    console = _console()
    if not devices:
        console.print("no devices" if args.presence is None else f"no {args.presence} devices")
        return EXIT_OK
    console.print(devices_table(devices, _total(response.headers)))
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    path = f"/devices/{quote(args.device, safe=':')}"
    with _gateway(args) as gateway:
        device = gateway.request("GET", path).json()
        tasks_response = gateway.request("GET", f"{path}/tasks", params={"limit": args.tasks})
    tasks = tasks_response.json()
    if args.json:
        print(json.dumps({"device": device, "tasks": tasks}, indent=2), flush=True)
        return EXIT_OK
    console = _console()
    console.print(devices_table([device], None))
    if tasks:
        console.print(tasks_table(tasks, _total(tasks_response.headers)))
    else:
        console.print("no tasks")
    return EXIT_OK


def _gateway(args: argparse.Namespace) -> GatewayClient:
    return GatewayClient(
        gateway_url(args), token=gateway_token(args), ssl_context=gateway_ssl_context(args)
    )


def _console() -> Any:  # noqa: ANN401 - rich's Console
    console = stdout_console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH  # as `pm jobs`: pipes have no width
    return console


def add_live_actions(actions: Any, url_options: argparse.ArgumentParser) -> None:  # noqa: ANN401
    """The live-state actions of ``pm devices`` (they ask the gateway at --url)."""
    state = actions.add_parser(
        "state",
        parents=[url_options],
        help="LIVE: devices as the running gateway sees them (presence, work, counts)",
    )
    state.add_argument("--presence", choices=PRESENCES, help="only devices with this presence")
    state.add_argument("--prefix", metavar="TEXT", help="only ids that start with TEXT")
    state.add_argument(
        "--limit", type=positive_int, default=50, metavar="N", help="at most N (default: 50)"
    )
    state.add_argument("--json", action="store_true", help="print the devices as JSON")
    state.set_defaults(run=run_state)
    show = actions.add_parser(
        "show",
        parents=[url_options],
        help="LIVE: one device from the running gateway, with its recent tasks",
    )
    show.add_argument("device", help="device id (any MAC spelling)")
    show.add_argument(
        "--tasks", type=positive_int, default=10, metavar="N", help="recent tasks (default: 10)"
    )
    show.add_argument("--json", action="store_true", help="print the device and tasks as JSON")
    show.set_defaults(run=run_show)
