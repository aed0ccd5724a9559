"""A registry of actors by key: spawned on first use, retired when idle.

Meant for populations far larger than what should be alive at once (a million known
devices, a few thousand busy ones): an actor exists while it has work, and ends by itself
after ``idle_timeout`` seconds with an empty mailbox. The next message for its key spawns a
fresh one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

import trio

from ._ref import ActorRef, ActorStopped
from ._supervisor import Supervisor

Key = TypeVar("Key", bound=Hashable)
Message = TypeVar("Message")


_NOTHING = object()  # "no message queued" (None may be a message)


class IdleInbox(Generic[Message]):
    """An inbox whose ``async for`` ends after ``idle_timeout`` seconds without messages.

    Ending is decided synchronously with deregistration (no checkpoint in between), so a
    message is either delivered to this actor or finds the key free and spawns a new one.
    """

    def __init__(
        self,
        inbox: trio.MemoryReceiveChannel[Message],
        idle_timeout: float,
        on_idle: Callable[[], None],
    ) -> None:
        self._inbox = inbox
        self._idle_timeout = idle_timeout
        self._on_idle = on_idle

    def __aiter__(self) -> IdleInbox[Message]:
        return self

    async def __anext__(self) -> Message:
        # Fast path: a message already queued (always, for a freshly spawned actor) is taken
        # without opening a timed cancel scope; scopes and trio's deadline heap upkeep
        # (Deadlines._prune) were ~10% of the gateway's CPU in a 10k-task job.
        queued = self._take_queued()
        if queued is not _NOTHING:
            return queued  # type: ignore[return-value]
        with trio.move_on_after(self._idle_timeout):
            try:
                return await self._inbox.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise StopAsyncIteration from None
        # Timed out. A sender may have run between the deadline firing and this task
        # resuming, and queued a message: it is ours to handle.
        queued = self._take_queued()
        if queued is not _NOTHING:
            return queued  # type: ignore[return-value]
        # Nothing queued: leave the registry now, before any other task runs.
        self._on_idle()
        raise StopAsyncIteration

    def _take_queued(self) -> Message | object:
        """A queued message, or ``_NOTHING``; raises StopAsyncIteration once closed."""
        try:
            return self._inbox.receive_nowait()
        except trio.WouldBlock:
            return _NOTHING
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def receive_nowait(self) -> Message:
        return self._inbox.receive_nowait()


#: How a registry builds the actor for a key: ``actor(key, inbox)``.
KeyedActor = Callable[[Any, IdleInbox[Any]], Awaitable[None]]


class Registry(Generic[Key, Message]):
    """Actors by key on top of a :class:`Supervisor`.

    Args:
      supervisor: runs the actors and applies its failure policy to them.
      actor: ``actor(key, inbox)``; it should ``async for message in inbox`` and return when
        the loop ends.
      capacity: mailbox size of each actor.
      idle_timeout: seconds without messages before an actor retires.
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
        self._supervisor = supervisor
        self._actor = actor
        self._capacity = capacity
        self._idle_timeout = idle_timeout
        self._name = name
        self._live: dict[Key, ActorRef[Message]] = {}
        self.spawned = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def __iter__(self) -> Iterator[Key]:
        return iter(self._live)

    def get(self, key: Key) -> ActorRef[Message] | None:
        """The live actor for ``key``, without spawning one."""
        return self._live.get(key)

    def ref(self, key: Key) -> ActorRef[Message]:
        """The live actor for ``key``, spawned now if there is none."""
        ref = self._live.get(key)
        if ref is None:
            ref = self._spawn(key)
        return ref

    async def tell(self, key: Key, message: Message) -> None:
        """Deliver to ``key``'s actor, spawning it if needed; waits while its mailbox is full."""
        while True:
            try:
                await self.ref(key).tell(message)
                return
            except ActorStopped:
                # It retired or was stopped between lookup and send: the key is free now.
                self._forget(key, self._live.get(key))

    def _spawn(self, key: Key) -> ActorRef[Message]:
        ref: ActorRef[Message] | None = None

        def retire() -> None:
            self._forget(key, ref)

        async def run(inbox: trio.MemoryReceiveChannel[Message]) -> None:
            await self._actor(key, IdleInbox(inbox, self._idle_timeout, retire))

        ref = self._supervisor.spawn(
            f"{self._name}:{key}", run, capacity=self._capacity, on_exit=retire
        )
        self._live[key] = ref
        self.spawned += 1
        return ref

    def _forget(self, key: Key, ref: ActorRef[Message] | None) -> None:
        # Only the registration of *this* actor: a successor may already hold the key.
        if ref is not None and self._live.get(key) is ref:
            del self._live[key]
            ref.close()
