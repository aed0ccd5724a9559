"""Job feeds: how a job's changes reach its watchers without the job ever waiting for them.

A :class:`JobFeed` is written by the job actor only, with synchronous calls that cost the
same whether one or a thousand watchers listen: task changes are encoded once and appended
to a bounded log; job changes only bump a version. Each :class:`Watcher` keeps its own
cursor in that log, so a slow watcher falls behind alone: when the log has moved past its
cursor it skips the lost task messages (and counts them), and job snapshots are coalesced to
at most one per ``coalesce_interval``. The final job message is kept apart from the log, so
every watcher receives it, however slow.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice

import msgspec
import trio

from .schemas import JobMessage, JobView, TaskMessage, TaskView

_encoder = msgspec.json.Encoder()


def encode_job_message(view: JobView) -> bytes:
    return _encoder.encode(JobMessage(job=view))


class JobFeed:
    """The broadcast side.

    Args:
      snapshot: returns the job's current view (without collection), read lazily by each
        watcher when it is time to send one.
      capacity: task messages kept for watchers that lag; older ones are lost to them.
    """

    def __init__(self, snapshot: Callable[[], JobView], capacity: int) -> None:
        self.snapshot = snapshot
        self._log: deque[bytes] = deque(maxlen=capacity)
        self._next_sequence = 0
        self.job_version = 0
        self.final_message: bytes | None = None
        self.watchers = 0
        self._changed = trio.Event()
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

    def messages_from(self, sequence: int) -> Iterator[bytes]:
        return islice(self._log, sequence - self.first_sequence, None)

    def snapshot_message(self) -> bytes:
        """The current job snapshot, encoded; built at most once per ``job_version``."""
        if self._snapshot_version != self.job_version:
            self._snapshot_message = encode_job_message(self.snapshot())
            self._snapshot_version = self.job_version
        return self._snapshot_message

    def task_changed(self, view_of_task: Callable[[], TaskView]) -> None:
        """Record a task change; the view is built and encoded only if someone listens."""
        if self.watchers:
            self._log.append(_encoder.encode(TaskMessage(task=view_of_task())))
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
            self._wake()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


class Watcher:
    """One subscriber: ``async for message in watcher`` yields encoded JSON messages.

    The first message is a job snapshot, the last is the final job snapshot; then the
    iteration ends. ``missed`` counts task messages this watcher lost by being slow.
    """

    def __init__(self, feed: JobFeed, coalesce_interval: float) -> None:
        self._feed = feed
        self._interval = coalesce_interval
        self._cursor = feed.next_sequence
        self._pending: deque[bytes] = deque()
        self._sent_job_version = -1
        self._next_snapshot_at = -float("inf")
        self._done = False
        self.missed = 0
        feed.watchers += 1

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._feed.watchers -= 1

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
        while not self._done:
            if self._pending:
                return self._pending.popleft()
            if self._cursor < feed.next_sequence:
                if self._cursor < feed.first_sequence:
                    self.missed += feed.first_sequence - self._cursor
                    self._cursor = feed.first_sequence
                self._pending.extend(feed.messages_from(self._cursor))
                self._cursor = feed.next_sequence
                continue
            if feed.final_message is not None:
                self.close()
                return feed.final_message
            now = trio.current_time()
            if self._sent_job_version != feed.job_version:
                if now >= self._next_snapshot_at:
                    return self._snapshot(now)
                # Coalesce: wait for the interval, or for anything else that arrives first.
                with trio.move_on_at(self._next_snapshot_at):
                    await feed.wait_changed()
                continue
            await feed.wait_changed()
        raise StopAsyncIteration

    def _snapshot(self, now: float) -> bytes:
        self._sent_job_version = self._feed.job_version
        self._next_snapshot_at = now + self._interval
        return self._feed.snapshot_message()
