"""A watcher's messages written coalesced: those due together in one write, at most one write
per update interval.

:class:`CoalescedWrites` keeps its state (the messages due, when the next write may go) on
itself, not in a coroutine's locals: a group of watchers fed by one watcher
(:mod:`pm.watch_group`) is driven by whichever of its connections' tasks is there, and when
that task ends (its client left) another one runs the same writes on, losing nothing.

Error handling: none here; what a write does when the client is gone is the writer's (it
returns False and the writes end).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

# Writes a watcher's messages (encoded JSON), one text frame each; False if the client is gone.
Writer = Callable[[list[bytes]], Awaitable[bool]]
# A write goes out as soon as it holds this many bytes of messages, whatever the interval: a
# backlog (a batch watcher catching up) is then written in pieces, and a watcher whose client
# stalls holds at most about this much, never a copy of all it has not sent (the watcher
# keeps the rest as references into the job's feed, and lags, then skips, as before).
MAX_WRITE_BYTES = 64 * 1024


class MessageSource(Protocol):
    """What is written: a :class:`pm.watch.Watcher` (its messages, then the end)."""

    def __aiter__(self) -> MessageSource: ...

    async def __anext__(self) -> bytes: ...

    def update_interval(self) -> float: ...


class CoalescedWrites:
    """The writes of one watcher's messages (see :func:`send_coalesced`).

    :meth:`run` may be cancelled and called again, by another task too: a message taken from
    the watcher is in ``self`` until written, and the watcher itself loses nothing to a
    cancelled wait (:mod:`pm.watch`). Only one task may run it at a time.
    """

    def __init__(self, watcher: MessageSource, write: Writer) -> None:
        self._watcher = watcher
        self._write = write
        self._due: list[bytes] = []
        self._due_bytes = 0
        self._write_at = trio.current_time()
        self._more = True

    @property
    def over(self) -> bool:
        """Every message was written (or the client went away)."""
        return not (self._more or self._due)

    async def run(self) -> bool:
        """Write until the watcher's end; False if the client went away during a write."""
        watcher = self._watcher
        while self._more or self._due:
            due = self._due
            if due and (
                not self._more
                or self._due_bytes >= MAX_WRITE_BYTES
                or trio.current_time() >= self._write_at
            ):
                self._due, self._due_bytes = [], 0
                if not await self._write(due):
                    self._more = False
                    return False
                self._write_at = trio.current_time() + watcher.update_interval()
                continue
            # Cancelling the wait loses nothing (pm.watch): the watcher keeps what it took.
            # With nothing due there is no deadline, and no cancel scope (one per message,
            # entered and left, was a fifth of this loop's CPU in a profile of 1,000
            # watchers).
            message = await (_next_before(watcher, self._write_at) if due else _next(watcher))
            if message is None:
                self._more = False
            elif message:
                due.append(message)
                self._due_bytes += len(message)
        return True


async def send_coalesced(watcher: MessageSource, write: Writer) -> bool:
    """Write the watcher's messages, those due together in one write, at most one write per
    :meth:`~pm.watch.Watcher.update_interval` (sooner once :data:`MAX_WRITE_BYTES` are due);
    the first and the final message at once.

    A write is what a watcher costs (a socket write, through trio's scheduler), whatever its
    frames: with 1,000 watchers of one job (an update interval of 1 s with the default
    ``watchers.max_updates_per_second``) that is at most 1,000 writes a second, however
    many task messages ``?tasks=each`` carries. The watcher never buffers for us: while a
    write waits on a slow client the watcher lags, then skips task messages, so the job and
    the other watchers never wait.

    Returns:
      False if the client went away during a write (nothing more can be sent).
    """
    return await CoalescedWrites(watcher, write).run()


async def _next(watcher: MessageSource) -> bytes | None:
    """The watcher's next message, None at its end."""
    try:
        return await anext(watcher)
    except StopAsyncIteration:
        return None


async def _next_before(watcher: MessageSource, deadline: float) -> bytes | None:
    """The watcher's next message if it comes before ``deadline`` (else ``b""``), None at
    its end."""
    with trio.move_on_at(deadline):
        return await _next(watcher)
    return b""
