"""``pm watch JOB``: follow a job over its WebSocket until it ends.

On a terminal a live rich progress bar; otherwise (pipes, CI logs, tests) one plain line per
status change and at most one a second while counts move, so logs stay short and readable.
Either way a summary follows the final job message, listing the failed tasks (fetched from
``GET /jobs/{id}?collection=true`` when their messages were missed).

Error handling: an unknown job (HTTP 404 on the handshake), an unreachable gateway, or a
connection that closes before the job ends is a :class:`CliError` (exit 2). A job deleted
while watched ends with its final ``cancelled`` message (exit 1). The exit status is 0 only
for a job that resolved with no errors, else 1.
"""

from __future__ import annotations

import argparse
import ssl
from typing import Any, Protocol

import httpx
import msgspec
import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from ..schemas import (
    JobView,
    TaskView,
    WatchMessage,
)
from ..watch import TaskMode
from ._arguments import (
    HelpFormatter,
    authorization,
    gateway_ssl_context,
    gateway_token,
    gateway_url,
    url_options,
)
from ._console import stdout_console
from ._errors import CliError, unreachable
from ._gateway_client import REQUEST_TIMEOUT, client_settings
from ._job_progress import FAILED_TASK_STATUSES, JobProgress, counts, state_details, summary

# Plain-line mode: least seconds between two progress lines while only counts change.
PLAIN_LINE_INTERVAL = 1.0

_decode_message = msgspec.json.Decoder(WatchMessage).decode
_decode_job = msgspec.json.Decoder(JobView).decode
# Above this many tasks the summary does not download the whole job to list failures.
MAX_TASKS_FETCHED = 10_000


class Display(Protocol):
    def update(self, progress: JobProgress) -> None: ...

    def close(self) -> None: ...


def bar_completed(job: JobView) -> float:
    """Where the progress bar stands, in tasks: settled tasks count whole and tasks under way
    by their last progress answer (206), since the job's progress is the mean of its tasks'."""
    return max(float(job.done_count), job.progress * job.total_count / 100)


class LiveDisplay:
    """A rich progress bar redrawn in place (terminals only)."""

    def __init__(self, console: Console, job_id: int) -> None:
        self.bar = Progress(
            TextColumn(f"job {job_id}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]resolved {task.fields[resolved]}"),
            TextColumn("[red]errors {task.fields[errors]}"),
            TextColumn("{task.fields[status]}"),
            TextColumn("[dim]{task.fields[details]}"),
            TimeElapsedColumn(),
            console=console,
            # The summary replaces the bar; leaving both would say the same thing twice.
            transient=True,
        )
        self._task = self.bar.add_task(
            "", total=None, resolved=0, errors=0, status="connecting", details=""
        )
        self.bar.start()

    def update(self, progress: JobProgress) -> None:
        job = progress.job
        if job is None:
            return
        self.bar.update(
            self._task,
            completed=bar_completed(job),
            total=job.total_count,
            resolved=job.finish_count,
            errors=job.error_count,
            status=job.status,
            details=state_details(job),
        )

    def close(self) -> None:
        self.bar.stop()


class PlainDisplay:
    """One line per status change, and at most one per second while only counts change."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._last_status: str | None = None
        self._last_counts: str | None = None
        self._last_line_at = -float("inf")

    def update(self, progress: JobProgress) -> None:
        job = progress.job
        if job is None or progress.final:  # the summary says the final state
            return
        now = trio.current_time()
        details = state_details(job)
        line_counts = f"{job.progress}%, {counts(job)}" + (f" ({details})" if details else "")
        status_changed = job.status != self._last_status
        counts_due = (
            line_counts != self._last_counts and now - self._last_line_at >= PLAIN_LINE_INTERVAL
        )
        if status_changed or counts_due:
            self._console.print(f"job {job.id} {job.status}: {line_counts}")
            self._last_status, self._last_counts, self._last_line_at = job.status, line_counts, now

    def close(self) -> None:
        pass


def websocket_url(url: str, job_id: int, tasks: TaskMode = "batch") -> str:
    """The job's stream with task changes batched (``?tasks=batch``): one message per
    interval instead of one per task change, cheaper for the gateway and for us. A gateway
    that predates the parameter ignores it and sends ``{"type":"task"}`` messages, which
    :meth:`JobProgress.apply` reads as well. ``tasks="none"``: job snapshots only."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise CliError(f"--url must start with http:// or https://, got {url!r}")
    ws_scheme = {"http": "ws", "https": "wss"}.get(scheme.lower())
    if ws_scheme is None:
        raise CliError(f"--url must start with http:// or https://, got {url!r}")
    return f"{ws_scheme}://{rest.rstrip('/')}/jobs/{job_id}/ws?tasks={tasks}"


async def watch_job(
    url: str,
    job_id: int,
    console: Console,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Follow job ``job_id`` until its final message; print the summary; return the status.

    Error handling: see the module docstring.
    """
    progress = await follow_job(url, job_id, console, token, ssl_context)
    await fetch_unseen_failures(url, progress, token, ssl_context)
    for line in summary(progress):
        console.print(line)
    return progress.exit_status


async def follow_job(
    url: str,
    job_id: int,
    console: Console,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    tasks: TaskMode = "batch",
) -> JobProgress:
    """Show job ``job_id``'s progress (a live bar on a terminal, plain lines otherwise) until
    its final message, and return what was learnt; prints no summary (``pm bench`` prints
    its own). ``tasks``: the stream's ``?tasks=`` (``none``: no failed task is learnt).

    Error handling: the :class:`CliError` of the module docstring.
    """
    progress = JobProgress(job_id)
    try:
        async with open_websocket_url(
            websocket_url(url, job_id, tasks),
            ssl_context=ssl_context,
            extra_headers=list(authorization(token).items()),
        ) as connection:
            display: Display = (
                LiveDisplay(console, job_id) if console.is_terminal else PlainDisplay(console)
            )
            try:
                close_code, close_reason = await _follow(connection, progress, display)
            finally:
                display.close()
    except ConnectionRejected as rejected:
        if rejected.status_code == 404:
            raise CliError(f"no job {job_id} at {url}") from None
        body = (rejected.body or b"").decode(errors="replace")
        raise CliError(
            f"the gateway refused to stream job {job_id} ({rejected.status_code}): {body}"
        ) from None
    except HandshakeError as error:
        if isinstance(error.__cause__, OSError):
            raise unreachable(url) from None
        raise CliError(f"cannot open the job stream at {url}: {error!r}") from None
    if not progress.final:
        # A job deleted while watched is not a special case: the gateway cancels it first, so
        # the stream ends with its final `cancelled` message like any other job.
        raise CliError(
            f"the gateway closed the stream of job {job_id} before the job ended "
            f"(code {close_code}{': ' + close_reason if close_reason else ''}); "
            f"`pm watch {job_id}` resumes"
        )
    return progress


async def fetch_unseen_failures(
    url: str,
    progress: JobProgress,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Complete ``progress.failed`` from ``GET /jobs/{id}?collection=true`` when task messages
    were missed (a job that ended before the watcher connected sends none at all).

    Best effort: the summary then says how many failures it could not show.
    """
    job = progress.job
    assert job is not None
    if job.error_count <= len(progress.failed) or job.total_count > MAX_TASKS_FETCHED:
        return
    try:
        async with httpx.AsyncClient(
            **client_settings(url, REQUEST_TIMEOUT, token, ssl_context)
        ) as client:
            response = await client.get(f"/jobs/{job.id}", params={"collection": "true"})
            response.raise_for_status()
        full = _decode_job(response.content)
    except (httpx.HTTPError, msgspec.DecodeError):
        return
    if isinstance(full.collection, list):
        for task in full.collection:
            if isinstance(task, TaskView) and task.task.status in FAILED_TASK_STATUSES:
                progress.failed[task.id] = task


async def _follow(
    connection: WebSocketConnection, progress: JobProgress, display: Display
) -> tuple[int | None, str | None]:
    """Apply messages until the job is final or the server closes; returns the close code."""
    while not progress.final:
        try:
            payload = await connection.get_message()
        except ConnectionClosed as closed:
            reason = closed.reason
            return (None, None) if reason is None else (reason.code, reason.reason)
        try:
            message = _decode_message(payload)
        except msgspec.DecodeError as error:
            raise CliError(f"the gateway sent a message pm does not understand: {error}") from None
        progress.apply(message)
        display.update(progress)
    return None, None


def run(args: argparse.Namespace) -> int:
    return trio.run(
        watch_job,
        gateway_url(args),
        args.job,
        stdout_console(),
        gateway_token(args),
        gateway_ssl_context(args),
    )


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "watch",
        parents=[url_options()],
        help="follow a job live until it ends",
        description=(
            "Follow a job over its WebSocket: a live progress bar on a terminal, plain lines "
            "otherwise, then a summary. Exit status 0 only if the job resolved with no errors, "
            "1 if it ended otherwise, 2 if it cannot be watched (unknown job, gateway down)."
        ),
        epilog="examples:\n  pm watch 12\n  pm watch 12 --url http://gateway.local:8080",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("job", type=int, metavar="JOB", help="the job id (from `pm submit`)")
    parser.set_defaults(run=run)
