"""A registry of actors by key: spawned on first use, retired when idle.

Meant for populations far larger than what should be alive at once (a million known
devices, a few thousand busy ones): an actor exists while it has work, and ends by itself
some ``idle_timeout`` seconds after its mailbox went empty. The next message for its key
spawns a fresh one.

Idle actors are found by one sweeper task per registry, not by a timer per actor: a timed
cancel scope around every wait for the next message put two deadline-heap entries per
message into trio's scheduler (entry and stale entry), which with 10,000 device actors
cost more CPU than the work itself (``Deadlines.expire``/``_prune``). The price is
precision: an actor retires between ``idle_timeout`` and ``idle_timeout * (1 +
1/SWEEPS_PER_IDLE_TIMEOUT)`` seconds after its last message.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

import trio

from ._ref import ActorRef, ActorStopped
from ._supervisor import Supervisor

Key = TypeVar("Key", bound=Hashable)
Message = TypeVar("Message")

#: How many times per ``idle_timeout`` the sweeper looks for idle actors.
SWEEPS_PER_IDLE_TIMEOUT = 4


class IdleInbox(Generic[Message]):
    """An actor's inbox whose ``async for`` ends when its registry retires it for idleness.

    Retirement is decided synchronously with deregistration, and only while the actor is
    parked on an empty mailbox with no message on its way to it: a message is either
    delivered to this actor or finds the key free and spawns a new one.
    """

    def __init__(self, inbox: trio.MemoryReceiveChannel[Message]) -> None:
        self._inbox = inbox
        # trio time at which the actor parked on an empty mailbox; None while it works.
        self._parked_since: float | None = None

    def __aiter__(self) -> IdleInbox[Message]:
        return self

    async def __anext__(self) -> Message:
        try:
            return self._inbox.receive_nowait()
        except trio.WouldBlock:
            pass
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        self._parked_since = trio.current_time()
        try:
            message = await self._inbox.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            # ClosedResourceError: the registry retired this actor (see retire).
            raise StopAsyncIteration from None
        self._parked_since = None
        return message

    def receive_nowait(self) -> Message:
        return self._inbox.receive_nowait()

    def idle_since_before(self, cutoff: float) -> bool:
        """Parked on an empty mailbox since ``cutoff`` or earlier, with nothing handed to it
        yet (trio hands a message to a parked receiver directly: it is then no longer
        counted as waiting, even before it runs)."""
        if self._parked_since is None or self._parked_since > cutoff:
            return False
        statistics = self._inbox.statistics()
        return statistics.tasks_waiting_receive > 0 and statistics.current_buffer_used == 0

    def retire(self) -> None:
        """End the actor's ``async for`` (it wakes with the mailbox closed)."""
        self._inbox.close()


#: How a registry builds the actor for a key: ``actor(key, inbox)``.
KeyedActor = Callable[[Any, IdleInbox[Any]], Awaitable[None]]


class _Entry(Generic[Message]):
    __slots__ = ("inbox", "ref")

    def __init__(self, ref: ActorRef[Message]) -> None:
        self.ref = ref
        self.inbox: IdleInbox[Message] | None = None  # set when the actor starts


class Registry(Generic[Key, Message]):
    """Actors by key on top of a :class:`Supervisor`.

    Args:
      supervisor: runs the actors and applies its failure policy to them.
      actor: ``actor(key, inbox)``; it should ``async for message in inbox`` and return when
        the loop ends.
      capacity: mailbox size of each actor.
      idle_timeout: seconds without messages before an actor retires (see the module
        docstring for the precision).
      name: prefix of actor names in logs.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        actor: KeyedActor,
        *,
        capacity: int,
        idle_timeout: float,
        name: str = "actor",
    ) -> None:
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0, got {idle_timeout!r}")
        self._supervisor = supervisor
        self._actor = actor
        self._capacity = capacity
        self._idle_timeout = idle_timeout
        self._name = name
        self._live: dict[Key, _Entry[Message]] = {}
        self._sweeping = False
        self.spawned = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def __iter__(self) -> Iterator[Key]:
        return iter(self._live)

    def get(self, key: Key) -> ActorRef[Message] | None:
        """The live actor for ``key``, without spawning one."""
        entry = self._live.get(key)
        return None if entry is None else entry.ref

    def ref(self, key: Key) -> ActorRef[Message]:
        """The live actor for ``key``, spawned now if there is none."""
        entry = self._live.get(key)
        if entry is None:
            entry = self._spawn(key)
        return entry.ref

    async def tell(self, key: Key, message: Message) -> None:
        """Deliver to ``key``'s actor, spawning it if needed; waits while its mailbox is full."""
        while True:
            entry = self._live.get(key)
            if entry is None:
                entry = self._spawn(key)
            try:
                await entry.ref.tell(message)
                return
            except ActorStopped:
                # It retired or was stopped between lookup and send: the key is free now.
                self._forget(key, entry)

    def _spawn(self, key: Key) -> _Entry[Message]:
        entry: _Entry[Message] | None = None

        def retire() -> None:
            self._forget(key, entry)

        async def run(inbox: trio.MemoryReceiveChannel[Message]) -> None:
            idle_inbox = IdleInbox(inbox)
            if entry is not None:
                entry.inbox = idle_inbox
            await self._actor(key, idle_inbox)

        entry = _Entry(
            self._supervisor.spawn(
                f"{self._name}:{key}", run, capacity=self._capacity, key=key, on_exit=retire
            )
        )
        self._live[key] = entry
        self.spawned += 1
        if not self._sweeping and self._idle_timeout != math.inf:
            self._sweeping = True
            self._supervisor.start_helper(self._sweep, name=f"{self._name}:sweeper")
        return entry

    def _forget(self, key: Key, entry: _Entry[Message] | None) -> None:
        # Only the registration of *this* actor: a successor may already hold the key.
        if entry is not None and self._live.get(key) is entry:
            del self._live[key]
            entry.ref.close()

    async def _sweep(self) -> None:
        """Retire the actors idle for ``idle_timeout``; ends when no actor is left."""
        try:
            while self._live:
                await trio.sleep(self._idle_timeout / SWEEPS_PER_IDLE_TIMEOUT)
                cutoff = trio.current_time() - self._idle_timeout
                idle = [
                    (key, entry, entry.inbox)
                    for key, entry in self._live.items()
                    if entry.inbox is not None and entry.inbox.idle_since_before(cutoff)
                ]
                for key, entry, inbox in idle:
                    self._forget(key, entry)
                    inbox.retire()
        finally:
            self._sweeping = False
