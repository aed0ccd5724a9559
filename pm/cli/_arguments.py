"""argparse types and options shared by several commands."""

from __future__ import annotations

import argparse
import math
import os
import ssl

from ._errors import CliError

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENVIRONMENT_VARIABLE = "PM_URL"
TOKEN_ENVIRONMENT_VARIABLE = "PM_TOKEN"
CA_FILE_ENVIRONMENT_VARIABLE = "PM_CA_FILE"


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as an argparse ``type``; port 0 means any free."""
    host, separator, port = text.rpartition(":")
    if not separator or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def probability(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text!r}")
    return value


# Units of --latency: seconds unless the value says ms.
_LATENCY_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0}


def _seconds(text: str, whole: str) -> float:
    number = text.strip()
    unit = "ms" if number.endswith("ms") else "s" if number.endswith("s") else ""
    try:
        value = float(number.removesuffix(unit)) * _LATENCY_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds like 0.02, 20ms or a range 10..50ms, got {whole!r}"
        ) from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite latency >= 0, got {whole!r}")
    return value


def latency_range(text: str) -> tuple[float, float]:
    """``--latency``: seconds (``0.5``, ``2s``) or milliseconds (``20ms``), one value or a
    range ``LOW..HIGH`` (``10..50ms``: the unit of HIGH applies to a bare LOW), as
    ``(low, high)`` seconds; one value gives ``low == high``."""
    low_text, separator, high_text = text.partition("..")
    if not separator:
        value = _seconds(text, text)
        return value, value
    high = _seconds(high_text, text)
    unit = "ms" if high_text.strip().endswith("ms") else ""
    bare = low_text.strip() and not low_text.strip()[-1].isalpha()
    low = _seconds(low_text + unit if bare else low_text, text)
    if low > high:
        raise argparse.ArgumentTypeError(f"expected LOW..HIGH with LOW <= HIGH, got {text!r}")
    return low, high


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def fleet_behaviour_options(options: argparse._ActionsContainer) -> None:
    """How simulated devices answer and connect, for ``pm simulate`` and ``pm bench``:
    ``--latency``, ``--error-rate``, ``--error-code``, ``--connections``, ``--seed``."""
    options.add_argument(
        "--latency",
        type=latency_range,
        default=(0.0, 0.0),
        metavar="TIME",
        help="how long each device takes to answer: seconds (0.5), milliseconds (20ms), or a "
        "range drawn from per request (10..50ms) (default: 0)",
    )
    options.add_argument(
        "--error-rate",
        type=probability,
        default=0.0,
        metavar="R",
        help="share of requests answered with --error-code, 0 to 1 (default: %(default)s)",
    )
    options.add_argument(
        "--error-code",
        type=int,
        default=500,
        metavar="C",
        help="the Sanji code of error answers (default: %(default)s)",
    )
    options.add_argument(
        "--connections",
        type=positive_int,
        metavar="K",
        help="share K MQTT connections among the devices (default: one per device)",
    )
    options.add_argument(
        "--seed", type=int, default=0, metavar="N", help="random seed (default: %(default)s)"
    )


def url_options() -> argparse.ArgumentParser:
    """A parent parser with ``--url``, for the commands that talk to a running gateway."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--url",
        metavar="URL",
        help=(
            f"the gateway's HTTP address (default: ${URL_ENVIRONMENT_VARIABLE}, else {DEFAULT_URL})"
        ),
    )
    parent.add_argument(
        "--token",
        metavar="TOKEN",
        help=(
            "an API token, when the gateway sets api.tokens"
            f" (default: ${TOKEN_ENVIRONMENT_VARIABLE}; prefer the variable: a command line"
            " is visible to other users)"
        ),
    )
    parent.add_argument(
        "--ca-file",
        metavar="FILE",
        help=(
            "PEM certificates to trust for an https:// gateway, e.g. its self-signed "
            f"http.certfile (default: ${CA_FILE_ENVIRONMENT_VARIABLE}, else the system's)"
        ),
    )
    return parent


def gateway_ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """What to trust for an https:// gateway: ``--ca-file``, else ``$PM_CA_FILE``, else
    ``None`` (the system's certificates).

    Error handling: a file that cannot be read as PEM certificates is a :class:`CliError`.
    """
    path = args.ca_file or os.environ.get(CA_FILE_ENVIRONMENT_VARIABLE) or None
    if path is None:
        return None
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as error:
        raise CliError(f"cannot use --ca-file {path}: {error}") from None


def gateway_token(args: argparse.Namespace) -> str | None:
    """``--token``, else ``$PM_TOKEN``, else none."""
    token: str | None = args.token or os.environ.get(TOKEN_ENVIRONMENT_VARIABLE) or None
    return token


def authorization(token: str | None) -> dict[str, str]:
    """The request header carrying ``token``, if any (never printed or logged)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def gateway_url(args: argparse.Namespace) -> str:
    """``--url``, else ``$PM_URL``, else the address ``pm serve`` uses by default."""
    url: str = args.url or os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL
    return url.rstrip("/")


def log_level_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much the process logs to stderr (default: %(default)s)",
    )


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions to the terminal, keeps laid-out text (epilogs with
    examples, anything containing a newline) exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)
