"""Watchers of one job that share a mode and an interval, written to together.

What a crowd of watchers cost the gateway was per watcher: each had its own
:class:`~pm.watch.Watcher` and its own task, woken by its own timer at each of its ticks to
take the job's changes, join the same task views into the same messages and frame them again
(bench/README.md, scenario 6, has the profile). A :class:`WatchGroup` has one watcher, the
*lead*, for all its members: at each write its messages are built and framed once, and the
same bytes go to every member with one non-blocking write (``send_now``); a member's own
task sleeps meanwhile, and is woken only for what its socket did not take at once.

What a member receives is what a watcher of its own would (:mod:`pm.watch`), written at the
group's writes:

- Its first message is the job's snapshot at its join (or, written by the caller, the final
  message of a job already final). From then on it gets the lead's messages, less what it
  already has: task views from before its join (a message of them straddling its join is
  rebuilt from the feed's log for it alone) and job snapshots not newer than its own. So the
  first write after a join may come sooner than one interval after it; from then on the
  member is in step with the group. In ``each`` mode a new member gets the group's task
  messages from its next write on, as they come: they lag the job (its budget of task
  messages), and may be of changes its first snapshot already counts, as a lagging ``each``
  watcher's always could.
- A member whose socket did not take a write at once is written the rest by its own task,
  and lags: the group's writes meanwhile are not queued for it. When the rest is written, its
  task catches up as a watcher of its own would: ``batch``, the task changes since its last
  write still in the feed's log (those the log lost are missed), at most
  :data:`~pm.http.coalesced_writes.MAX_WRITE_BYTES` of them per write; ``each``, none (a
  lagging ``each`` watcher misses task messages); then the latest snapshot. From there it is
  in step with the group again. The final message is never skipped, and is the last message
  of every member; the connection's close frame follows it in the same write.

The feed counts every member, not the lead: ``watchers.max_updates_per_second`` sets the
group's interval from all the job's watchers, and each ``each`` member counts in the share of
``watchers.max_task_messages_per_second`` as a watcher of its own would.

Restart and error policy: the writes are run by one task at a time, in the connection's
nursery of one member (the host); when the host leaves (its final message written, or its
client went away), another member's nursery runs them on, losing nothing
(:class:`~pm.http.coalesced_writes.CoalescedWrites`). A member whose client is gone
(``send_now`` raised, or ``send_rest`` returned False) is only marked gone; its own task
then ends its watch. A bug raised by the lead ends the host's watch, which its connection
reports (1011); another member's nursery then runs the lead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

import trio

from .http.coalesced_writes import MAX_WRITE_BYTES, CoalescedWrites
from .http.websocket_frames import text_frames
from .watch import JobFeed, TaskMode, Watcher, take_batch


class MemberSocket(Protocol):
    """Where a member's frames are written."""

    def send_now(self, data: bytes) -> int:
        """Write what the socket takes at once, without waiting: the bytes written.

        Error handling: raises :class:`trio.BrokenResourceError` or
        :class:`trio.ClosedResourceError` when the client is gone."""
        ...

    async def send_rest(self, data: memoryview) -> bool:
        """Write ``data`` whole; False if the client is gone."""
        ...

    def normal_close_frame(self) -> bytes:
        """The close frame (1000) that follows the final message in the same write, the
        socket then closing (``b""`` if a close frame was already sent)."""
        ...


@dataclass(frozen=True, slots=True)
class _Held:
    """What one of the lead's messages holds: task views of feed sequences ``[first, end)``
    (a task message), or a job snapshot of ``job_version`` (``first == end``)."""

    message: bytes
    first: int
    end: int
    job_version: int
    final: bool


class _Lead:
    """The group's watcher, noting what each message it returns holds."""

    def __init__(self, watcher: Watcher, feed: JobFeed) -> None:
        self.watcher = watcher
        self._feed = feed
        self.held: deque[_Held] = deque()

    def __aiter__(self) -> _Lead:
        return self

    async def __anext__(self) -> bytes:
        watcher = self.watcher
        views_before = watcher.views_sent
        message = await anext(watcher)
        views = watcher.views_sent - views_before
        end = watcher.sent_sequence
        final = message is self._feed.final_message
        self.held.append(
            _Held(message, end - views, end, -1 if views else watcher.job_version_sent, final)
        )
        return message

    def update_interval(self) -> float:
        return self.watcher.update_interval()


class GroupMember:
    """One watcher's connection in a group: what it has, what its task still has to write."""

    def __init__(self, socket: MemberSocket, cursor: int, job_version: int) -> None:
        self.socket = socket
        # Task changes from this feed sequence on are owed to it; snapshots newer than this.
        self.cursor = cursor
        self.job_version = job_version
        # What its socket did not take at once, for its task to write.
        self.rest: memoryview | None = None
        # It missed group writes while its rest was written (and owes the final, if so).
        self.behind = False
        self.final_due = False
        self.final = False
        self.gone = False
        # Its connection's nursery, where the group's writes run while it hosts them; the
        # scope that moves them away when it leaves; a bug they raised there, for its task.
        self.nursery: trio.Nursery | None = None
        self.lead_scope = trio.CancelScope()
        self.lead_error: Exception | None = None
        self._wake = trio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def wait(self) -> None:
        await self._wake.wait()
        self._wake = trio.Event()


class WatchGroup:
    """The watchers of one job with one mode and interval (see the module docstring).

    Args:
      feed: the job's feed.
      watcher: the lead, made by :meth:`pm.jobs.Job.watch` with the members' mode and
        interval; closed with the group.
      tasks: its mode.
      on_empty: called when the last member leaves (the group is then over).
    """

    def __init__(
        self, feed: JobFeed, watcher: Watcher, tasks: TaskMode, on_empty: Callable[[], None]
    ) -> None:
        self._feed = feed
        self._tasks = tasks
        # The members are counted, each as the watcher of its own it stands for.
        watcher.uncount()
        self._lead = _Lead(watcher, feed)
        self._writes = CoalescedWrites(self._lead, self._fan_out)
        self._on_empty = on_empty
        self._members: set[GroupMember] = set()
        # The member in whose connection's nursery the group's writes run (one at a time).
        self._lead_host: GroupMember | None = None
        self._leading = False
        self._leader_gone = trio.Event()
        # The last job snapshot the lead wrote, and where its task views ended: what a
        # member that lagged catches up to.
        self._snapshot_version = -1
        self._snapshot = b""
        self._written_end = feed.next_sequence

    @contextmanager
    def membership(self, socket: MemberSocket, before: bytes = b"") -> Iterator[GroupMember]:
        """A new member, written its first message (the job's snapshot) at once, after
        ``before`` in the same write (the handshake's answer: one system call, not two); it
        leaves the group on exit."""
        feed = self._feed
        # "each": the lead's task messages lag the job by design (the job's budget of them);
        # a new member takes them from where the group is, as a lagging watcher of its own
        # would take its own, not only those of changes after its join (which the lead may
        # reach only much later).
        cursor = self._written_end if self._tasks == "each" else feed.next_sequence
        member = GroupMember(socket, cursor, feed.job_version)
        feed.count_watchers(self._tasks, 1)
        self._members.add(member)
        try:
            self._send(member, before + text_frames([feed.snapshot_message()]), final=False)
            yield member
        finally:
            self._members.discard(member)
            feed.count_watchers(self._tasks, -1)
            if self._lead_host is member:
                # The writes move to another member's connection, losing nothing.
                member.lead_scope.cancel()
                self._lead_host = None
                self._host_writes()
            if not self._members:
                self._lead.watcher.close()
                self._on_empty()

    async def watch(self, member: GroupMember, nursery: trio.Nursery) -> bool:
        """Until the member's final message is written; False if its client went away.

        The group's writes run in a task of one member's connection ``nursery`` at a time
        (not one standby task per member: a task spawned is a tenth of a member's cost),
        moved to another member's when that member leaves.

        Error handling: a bug raised by the group's writes is raised here, in the task of the
        member whose nursery ran them (its connection reports it: 1011)."""
        member.nursery = nursery
        if self._lead_host is None:
            self._host_writes()
        return await self._write_member(member)

    def _host_writes(self) -> None:
        """Run the group's writes in a member's connection nursery, if any member is left
        and anything is left to write."""
        if self._writes.over:
            return
        for member in self._members:
            if member.nursery is not None:
                self._lead_host = member
                member.nursery.start_soon(self._run_writes, member)
                return

    async def _run_writes(self, host: GroupMember) -> None:
        with host.lead_scope:
            try:
                await self._lead_when_needed()
            except Exception as error:
                host.lead_error = error
                host.wake()

    async def _lead_when_needed(self) -> None:
        while not self._writes.over:
            if self._leading:
                await self._leader_gone.wait()
                continue
            self._leading = True
            try:
                await self._writes.run()
            finally:
                self._leading = False
                self._leader_gone.set()
                self._leader_gone = trio.Event()

    async def _fan_out(self, messages: list[bytes]) -> bool:
        """One write of the lead: the same frames to every member in step, its own to the
        others (see the module docstring). Never waits."""
        held = [self._lead.held.popleft() for _ in messages]
        first_task = next((item.first for item in held if item.end > item.first), None)
        versions = [item.job_version for item in held if item.end == item.first and not item.final]
        end = held[-1].end
        final = held[-1].final
        snapshot_before = self._snapshot_version
        for item in held:
            if item.end == item.first and not item.final:
                self._snapshot_version, self._snapshot = item.job_version, item.message
        self._written_end = end
        shared: bytes | None = None
        for member in list(self._members):
            if member.final or member.gone:
                continue
            if member.rest is not None or member.behind:
                # Its task is still writing: it lags, and catches up after (_catch_up).
                member.behind = True
                member.final_due = member.final_due or final
                member.wake()
                continue
            if (
                (first_task is None or member.cursor <= first_task)
                and member.job_version >= snapshot_before
                and (not versions or member.job_version < min(versions))
            ):
                if shared is None:
                    shared = text_frames(messages)
                member.cursor = max(member.cursor, end)
                member.job_version = max(member.job_version, self._snapshot_version)
                self._send(member, shared, final)
            elif own := self._own_messages(member, held):
                self._send(member, text_frames(own), final)
        return True

    def _own_messages(self, member: GroupMember, held: list[_Held]) -> list[bytes]:
        """What of the lead's write a member out of step gets, as its own watcher would."""
        messages: list[bytes] = []
        for item in held:
            if item.final:
                messages.append(item.message)
            elif item.end > item.first:
                if item.end <= member.cursor:
                    continue  # from before its join
                if item.first >= member.cursor:
                    messages.append(item.message)
                else:
                    messages += self._rebuilt(member.cursor, item.end)
                member.cursor = item.end
            elif item.job_version > member.job_version:
                messages.append(item.message)
                member.job_version = item.job_version
        if member.job_version < self._snapshot_version and not held[-1].final:
            # It skipped the latest snapshot while lagging.
            messages.append(self._snapshot)
            member.job_version = self._snapshot_version
        return messages

    def _rebuilt(self, first: int, end: int) -> list[bytes]:
        """Batch messages of the task views of feed sequences ``[first, end)`` still logged
        (a member's share of a batch message that straddles its join)."""
        feed = self._feed
        first = max(first, feed.first_sequence)
        views = deque(islice(feed.views_from(first), max(0, end - first)))
        messages = []
        while views:
            messages.append(take_batch(views))
        return messages

    def _catch_up(self, member: GroupMember) -> None:
        """One write of what a member that lagged missed (see the module docstring); it is
        in step again once nothing is left."""
        feed = self._feed
        messages: list[bytes] = []
        if self._tasks == "batch" and member.cursor < self._written_end:
            first = max(member.cursor, feed.first_sequence)
            views = deque(islice(feed.views_from(first), max(0, self._written_end - first)))
            size = 0
            while views and size < MAX_WRITE_BYTES:
                messages.append(take_batch(views))
                size += len(messages[-1])
            member.cursor = self._written_end - len(views)
            if views:
                self._send(member, text_frames(messages), final=False)
                return
        member.cursor = max(member.cursor, self._written_end)
        member.behind = False
        if member.final_due:
            assert feed.final_message is not None
            messages.append(feed.final_message)
        elif member.job_version < self._snapshot_version:
            messages.append(self._snapshot)
            member.job_version = self._snapshot_version
        if messages:
            self._send(member, text_frames(messages), final=member.final_due)

    async def _write_member(self, member: GroupMember) -> bool:
        """The member's task: what its socket did not take at once, and its catching up,
        until its final message is written; False if its client went away."""
        while not member.gone:
            if member.lead_error is not None:
                raise member.lead_error
            if (rest := member.rest) is not None:
                # Left set while written: group writes meanwhile see the member busy.
                if not await member.socket.send_rest(rest):
                    member.gone = True
                    break
                member.rest = None
            elif member.behind:
                self._catch_up(member)
            elif member.final:
                return True
            else:
                await member.wait()
        return False

    def _send(self, member: GroupMember, data: bytes, final: bool) -> None:
        """``data`` to the member: written at once if its socket takes it, else the rest left
        to its task. After the ``final`` message comes the close frame, in the same write."""
        if final:
            data += member.socket.normal_close_frame()
        try:
            written = member.socket.send_now(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            member.gone = True
            member.wake()
            return
        if written < len(data):
            member.rest = memoryview(data)[written:]
            member.wake()
        if final:
            member.final = True
            member.wake()
