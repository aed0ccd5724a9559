"""``pm devices add|remove|list``: the device password file of the embedded broker; ``pm
devices state|show`` ask the running gateway instead (:mod:`pm.cli._device_state`).

The credential actions work on the file directly (no gateway needed); a running broker
re-reads it at the next CONNECT, so an added device can log in at once and a removed one
cannot log in again (an open connection stays open until it drops).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..config import load_config
from ..passwords import (
    PasswordFileError,
    generate_password,
    hash_password,
    read_password_file,
    write_password_file,
)
from ..protocol import InvalidDeviceId, normalize_device_id
from ._arguments import HelpFormatter, url_options
from ._device_state import add_live_actions
from ._errors import EXIT_OK, CliError

EPILOG = """\
examples:
  pm devices add 02:00:00:00:00:01          # prints a generated password, once
  pm devices add lab-7 --password "$SECRET"  # the same secret for a test fleet
  pm devices list
  pm devices remove 02:00:00:00:00:01
  pm devices state --presence offline        # LIVE, from the gateway at --url / $PM_URL
  pm devices show 02:00:00:00:00:01          # LIVE: one device and its recent tasks

Credentials (add, remove, list) edit a file and need no gateway. The file is
broker.password_file (default ./devices.passwd), or --file. It is used when
broker.auth = true; see README, Security.
"""


def password_file(args: argparse.Namespace) -> str:
    if args.file:
        return str(args.file)
    return load_config(args.config).broker.password_file


def _device(raw: str) -> str:
    try:
        return normalize_device_id(raw)
    except InvalidDeviceId as error:
        raise CliError(str(error)) from None


def _entries(path: str) -> dict[str, str]:
    try:
        return read_password_file(path)
    except (PasswordFileError, OSError, UnicodeDecodeError) as error:
        raise CliError(f"cannot read {path}: {error}") from None


def _save(path: str, entries: dict[str, str]) -> None:
    try:
        write_password_file(path, entries)
    except OSError as error:
        raise CliError(f"cannot write {path}: {error}") from None


def run(args: argparse.Namespace) -> int:
    path = password_file(args)
    entries = _entries(path)
    if args.action == "list":
        for device in sorted(entries):
            print(device)
        return EXIT_OK
    device = _device(args.device)
    if args.action == "remove":
        if entries.pop(device, None) is None:
            raise CliError(f"{device} is not in {path}")
        _save(path, entries)
        print(f"removed {device} from {path}", file=sys.stderr)
        return EXIT_OK
    if args.action != "add":
        raise AssertionError(f"unknown action {args.action!r}")
    if device in entries and not args.replace:
        raise CliError(f"{device} is already in {path}; --replace sets a new password")
    password = args.password if args.password is not None else generate_password()
    if not password:
        raise CliError("the password is empty")
    entries[device] = hash_password(password)
    _save(path, entries)
    if args.password is None:
        # The only time it is shown: the file keeps its hash only.
        print(password)
        print(f"added {device} to {path}; its password is above, shown once", file=sys.stderr)
    else:
        print(f"added {device} to {path}", file=sys.stderr)
    return EXIT_OK


def add_parser(subparsers: Any) -> None:  # noqa: ANN401 - argparse's private action type
    parser = subparsers.add_parser(
        "devices",
        help="device credentials (the password file) and live device state (the gateway)",
        description=(
            "Credentials: add, remove or list devices in the broker's password file "
            "(broker.auth); no gateway needed. Live state: `state` and `show` ask the running "
            "gateway for presence, pending and in-flight work and task counts."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="a TOML config file")
    parser.add_argument("--file", metavar="PATH", help="the password file (default: config's)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add", help="CREDENTIALS: add a device; prints a generated password once"
    )
    add.add_argument("device", help="device id (normalized like job destinations)")
    add.add_argument("--password", help="use this password instead of a generated one")
    add.add_argument("--replace", action="store_true", help="replace an existing entry")
    remove = actions.add_parser("remove", help="CREDENTIALS: remove a device")
    remove.add_argument("device", help="device id")
    actions.add_parser("list", help="CREDENTIALS: list the device ids in the password file")
    add_live_actions(actions, url_options())
    parser.set_defaults(run=run)
