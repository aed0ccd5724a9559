"""Job feeds: how a job's changes reach its watchers without the job ever waiting for them.

A :class:`JobFeed` is written by the job actor only, with synchronous calls that cost the
same whether one or a thousand watchers listen: task changes are encoded once (as task
views) and appended to a bounded log; job changes only bump a version. Each
:class:`Watcher` keeps its own cursor in that log, so a slow watcher falls behind alone:
when the log has moved past its cursor it skips the lost task messages (and counts them),
and job snapshots are coalesced to at most one per ``coalesce_interval``. The final job
message is kept apart from the log, so every watcher receives it, however slow.

What a watcher receives about tasks is its :data:`TaskMode`:

- ``each``: one ``{"type":"task","task":...}`` message per task change (the original
  protocol, for clients that read one task per message);
- ``batch``: at most one ``{"type":"tasks","tasks":[...]}`` message per interval with every
  task change since the last one, oldest first, followed by the snapshot of that tick;
- ``none``: job snapshots only (a progress bar needs only the counts).

Each message is one WebSocket frame. What watchers cost the gateway is mostly its writes to
their sockets: ``batch`` and ``none`` bound the messages by time instead of by the job's
size, and the WebSocket route writes the messages due to a watcher together, at most once per
:meth:`Watcher.update_interval` (:mod:`pm.http.watch_route`).

Cancelling a wait for the next message (``__anext__``) loses nothing: what a watcher has taken
from the feed is kept on the watcher, never in a local variable across a wait, and a message
is returned in the same step that takes it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Literal, get_args

import msgspec
import trio

from .schemas import JobMessage, JobView, TaskView

TaskMode = Literal["each", "batch", "none"]
TASK_MODES: tuple[TaskMode, ...] = get_args(TaskMode)
# A batch message holds task views up to about this many bytes; the rest of a backlog
# follows in further messages at once. Many clients refuse messages over 1 MiB (trio-
# websocket by default), and each watcher blocked on a slow client holds one such message.
MAX_BATCH_BYTES = 64 * 1024
# Seconds over which an "each" watcher's share of max_task_messages_per_second is counted
# when coalesce_interval is shorter.
MIN_SHARE_WINDOW = 0.01

_encoder = msgspec.json.Encoder()
# The messages around already-encoded task views: joining bytes is all a watcher does per
# task, never encoding it again. (Tagged structs encode their tag first; a test checks that
# these equal msgspec's own encoding.)
_TASK_PREFIX = b'{"type":"task","task":'
_TASK_SUFFIX = b"}"
_BATCH_PREFIX = b'{"type":"tasks","tasks":['
_BATCH_SUFFIX = b"]}"


def parse_task_mode(value: str) -> TaskMode:
    """``value`` as a :data:`TaskMode`.

    Error handling: anything else is a ValueError that lists the modes.
    """
    for mode in TASK_MODES:
        if value == mode:
            return mode
    raise ValueError(f"tasks must be one of {', '.join(TASK_MODES)}, got {value!r}")


def encode_job_message(view: JobView) -> bytes:
    return _encoder.encode(JobMessage(job=view))


def task_message(view: bytes) -> bytes:
    """``{"type":"task"}`` around one encoded task view."""
    return b"".join((_TASK_PREFIX, view, _TASK_SUFFIX))


def take_batch(views: deque[bytes]) -> bytes:
    """One ``{"type":"tasks"}`` message holding the first of ``views`` (taken from it), about
    :data:`MAX_BATCH_BYTES` at most; a single larger view still goes, alone."""
    chunk = [views.popleft()]
    size = len(chunk[0])
    while views and size + len(views[0]) < MAX_BATCH_BYTES:
        view = views.popleft()
        chunk.append(view)
        size += len(view) + 1
    return b"".join((_BATCH_PREFIX, b",".join(chunk), _BATCH_SUFFIX))


class JobFeed:
    """The broadcast side.

    Args:
      snapshot: returns the job's current view (without collection), read lazily by each
        watcher when it is time to send one.
      capacity: task changes kept for watchers that lag; older ones are lost to them.
    """

    def __init__(self, snapshot: Callable[[], JobView], capacity: int) -> None:
        self.snapshot = snapshot
        self._log: deque[bytes] = deque(maxlen=capacity)
        self._next_sequence = 0
        self.job_version = 0
        self.final_message: bytes | None = None
        self.watchers = 0
        # Watchers whose mode is not "none": without them task changes are not even encoded.
        self.task_watchers = 0
        # Watchers in "each" mode: they share max_task_messages_per_second.
        self.each_watchers = 0
        self._changed = trio.Event()
        self._closed = trio.Event()
        # The encoded snapshot of job_version _snapshot_version: N watchers due a snapshot of
        # the same version share one view and one encoding instead of building N.
        self._snapshot_message = b""
        self._snapshot_version = -1

    @property
    def first_sequence(self) -> int:
        return self._next_sequence - len(self._log)

    @property
    def next_sequence(self) -> int:
        return self._next_sequence

    def count_watchers(self, tasks: TaskMode, change: int) -> None:
        """Count ``change`` watchers of mode ``tasks`` in (or, negative, out): the counts that
        decide what is encoded and how the budgets are shared."""
        self.watchers += change
        if tasks != "none":
            self.task_watchers += change
        if tasks == "each":
            self.each_watchers += change

    def views_from(self, sequence: int) -> Iterator[bytes]:
        """The encoded task views logged from ``sequence`` (at least ``first_sequence``)."""
        return islice(self._log, sequence - self.first_sequence, None)

    def snapshot_message(self) -> bytes:
        """The current job snapshot, encoded; built at most once per ``job_version``."""
        if self._snapshot_version != self.job_version:
            self._snapshot_message = encode_job_message(self.snapshot())
            self._snapshot_version = self.job_version
        return self._snapshot_message

    def task_changed(self, view_of_task: Callable[[], TaskView]) -> None:
        """Record a task change; the view is built and encoded only if someone listens."""
        if self.task_watchers:
            self._log.append(_encoder.encode(view_of_task()))
            self._next_sequence += 1
            self._wake()

    def job_changed(self) -> None:
        self.job_version += 1
        if self.watchers:
            self._wake()

    def close(self) -> None:
        """The job is final: its last snapshot is fixed and every watcher will get it."""
        if self.final_message is None:
            self.final_message = encode_job_message(self.snapshot())
            self._closed.set()
            self._wake()

    async def wait_changed(self) -> None:
        """Until the next task or job change, or the close."""
        await self._changed.wait()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


class Watcher:
    """One subscriber: ``async for message in watcher`` yields encoded JSON messages.

    The first message is a job snapshot, the last is the final job snapshot; then the
    iteration ends. ``missed`` counts task changes this watcher lost by being slow.

    Args:
      feed: the job's feed.
      coalesce_interval: least seconds between two job snapshots (and, in ``batch`` mode,
        between two batch ticks) to this watcher.
      tasks: what it receives about tasks (see the module docstring).
      max_updates_per_second: the job's budget of coalesced updates for all its watchers
        together: with N watchers, each waits at least N / budget seconds between two
        (0: no budget). Task messages of ``each`` mode are not coalesced, so not counted.
      max_task_messages_per_second: the job's budget of ``each`` task messages, shared
        evenly by its ``each`` watchers and counted per ``coalesce_interval``: beyond its
        share a watcher waits (and lags, then misses task changes as any slow watcher);
        at the final message it drops what it still holds (0: no budget).
    """

    def __init__(
        self,
        feed: JobFeed,
        coalesce_interval: float,
        tasks: TaskMode = "each",
        max_updates_per_second: float = 0.0,
        *,
        max_task_messages_per_second: float = 0.0,
    ) -> None:
        self._feed = feed
        self._coalesce_interval = coalesce_interval
        self._max_updates_per_second = max_updates_per_second
        self._max_task_messages_per_second = max_task_messages_per_second
        # "each": task messages still allowed until _share_window_end.
        self._share_left = 0
        self._share_window_end = -float("inf")
        self._tasks = parse_task_mode(tasks)
        self._cursor = feed.next_sequence
        # Task views taken from the feed, not sent yet: references to the feed's bytes, each
        # wrapped ("each") or joined ("batch") only when its message goes out.
        self._pending: deque[bytes] = deque()
        # "batch" and "none": the snapshot of the last tick, due after its task changes.
        self._pending_snapshot: bytes | None = None
        self._sent_job_version = -1
        # When the next coalesced snapshot (and, in batch and none modes, tick) may go out.
        self._next_at = -float("inf")
        self._done = False
        self.missed = 0
        # Task views returned in task messages so far (a group of watchers fed by this one
        # tells from it which feed sequences a message holds: pm.watch_group).
        self.views_sent = 0
        self._counted = True
        feed.count_watchers(self._tasks, 1)

    def uncount(self) -> None:
        """Stop counting this watcher among the feed's watchers: a group it feeds
        (:mod:`pm.watch_group`) counts its members instead."""
        if self._counted and not self._done:
            self._counted = False
            self._feed.count_watchers(self._tasks, -1)

    @property
    def sent_sequence(self) -> int:
        """The feed sequence before which every task change was returned or missed."""
        return self._cursor - len(self._pending)

    @property
    def job_version_sent(self) -> int:
        """The job version of the last job snapshot returned (-1 before the first)."""
        return self._sent_job_version

    def close(self) -> None:
        if not self._done:
            self._done = True
            if self._counted:
                self._feed.count_watchers(self._tasks, -1)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> bytes:
        feed = self._feed
        if self._sent_job_version < 0 and not self._done:
            # The first message is always a snapshot, even if task changes came meanwhile.
            if feed.final_message is not None:
                self.close()
                return feed.final_message
            return self._snapshot(trio.current_time())
        each = self._tasks == "each"
        while not self._done:
            if self._pending:
                if not each:
                    held = len(self._pending)
                    batch = take_batch(self._pending)
                    self.views_sent += held - len(self._pending)
                    return batch
                now = trio.current_time()
                if self._within_share(now):
                    self.views_sent += 1
                    return task_message(self._pending.popleft())
                # Over its share of the job's task-message budget: a slow watcher.
                if feed.final_message is not None:
                    # Nothing holds the final message back: what is left is missed.
                    self.missed += len(self._pending)
                    self._pending.clear()
                    continue
                if self._sent_job_version != feed.job_version and now >= self._next_at:
                    return self._snapshot(now)  # the counts stay current meanwhile
                with trio.move_on_at(self._share_window_end):
                    await feed.wait_closed()
                continue
            if self._pending_snapshot is not None:
                snapshot, self._pending_snapshot = self._pending_snapshot, None
                return snapshot
            if self._cursor < feed.next_sequence and (
                each or (self._tasks == "batch" and feed.final_message is not None)
            ):
                # "each" sends task changes at once; "batch" outside its ticks only
                # flushes them before the final message.
                self._take_tasks()
                continue
            if feed.final_message is not None:
                self.close()
                return feed.final_message
            now = trio.current_time()
            if not each:
                await self._tick(now)
            elif (snapshot := await self._wait_each(now)) is not None:
                return snapshot
        raise StopAsyncIteration

    async def _wait_each(self, now: float) -> bytes | None:
        """``each``: a snapshot if one is due, else wait for a change (task changes are not
        held back by a coalesced snapshot)."""
        feed = self._feed
        if self._sent_job_version != feed.job_version:
            if now >= self._next_at:
                return self._snapshot(now)
            # Coalesce: wait for the interval, or for anything else that arrives first.
            with trio.move_on_at(self._next_at):
                await feed.wait_changed()
            return None
        await feed.wait_changed()
        return None

    async def _tick(self, now: float) -> None:
        """``batch`` and ``none``: what changed goes out together, at most once per interval."""
        feed = self._feed
        if now < self._next_at:
            # Nothing but the final message may go out before the tick: sleep until then
            # without waking on each of the job's changes.
            with trio.move_on_at(self._next_at):
                await feed.wait_closed()
            return
        tasks_due = self._tasks == "batch" and self._cursor < feed.next_sequence
        if not tasks_due and self._sent_job_version == feed.job_version:
            await feed.wait_changed()  # idle: the first change goes out at once
            return
        if tasks_due:
            self._take_tasks()
        if self._sent_job_version != feed.job_version:
            # After the tasks: the snapshot counts them all.
            self._pending_snapshot = self._snapshot(now)
        self._next_at = now + self.update_interval()

    def _within_share(self, now: float) -> bool:
        """``each``: whether one more task message fits this watcher's share of the job's
        budget in the current window (one ``coalesce_interval``); counts it if so."""
        budget = self._max_task_messages_per_second
        if budget <= 0:
            return True
        if now >= self._share_window_end:
            # Without coalescing (interval 0) the budget still needs a window to count in.
            window = max(self._coalesce_interval, MIN_SHARE_WINDOW)
            share = budget / max(1, self._feed.each_watchers) * window
            self._share_left = max(1, int(share))
            self._share_window_end = now + window
        if self._share_left <= 0:
            return False
        self._share_left -= 1
        return True

    def _take_tasks(self) -> None:
        feed = self._feed
        if self._cursor < feed.first_sequence:
            self.missed += feed.first_sequence - self._cursor
            self._cursor = feed.first_sequence
        self._pending.extend(feed.views_from(self._cursor))
        self._cursor = feed.next_sequence

    def update_interval(self) -> float:
        """Seconds until this watcher's next update: the job's budget shared by all its
        watchers, never less than ``coalesce_interval``. The WebSocket route also writes to
        a watcher at most once per update interval (:mod:`pm.http.watch_route`)."""
        if self._max_updates_per_second <= 0:
            return self._coalesce_interval
        return max(self._coalesce_interval, self._feed.watchers / self._max_updates_per_second)

    def _snapshot(self, now: float) -> bytes:
        self._sent_job_version = self._feed.job_version
        self._next_at = now + self.update_interval()
        return self._feed.snapshot_message()
