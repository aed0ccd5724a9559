"""Supervision: who runs actors, and what happens when one raises.

A :class:`Supervisor` owns a nursery. Every actor it runs is wrapped so that an exception
does not cancel the nursery (and with it the sibling actors); instead the supervisor's
``on_failure`` policy is told *which* actor failed and *why*, and answers with a
:class:`Directive`:

- ``RESTART``: run the actor function again on the same mailbox (queued messages are kept;
  the message being handled when it raised is lost). After ``max_restarts`` restarts within
  ``restart_window`` seconds the actor is stopped instead, so a crash loop cannot spin.
- ``STOP``: the actor ends; its mailbox is closed so senders get ``ActorStopped``. The policy
  may call :meth:`Failure.drain` first to collect the messages that will never be handled.
- ``ESCALATE``: re-raise, which cancels the supervisor's nursery and every sibling actor and
  propagates to whoever owns the supervisor ("one for all").

``trio.Cancelled`` is never treated as a failure: it always propagates.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import trio

from ._ref import ActorRef, Reply, open_mailbox

logger = logging.getLogger(__name__)

Message = TypeVar("Message")

#: An actor: an async function that consumes its inbox until it ends or the inbox closes.
ActorFunction = Callable[[trio.MemoryReceiveChannel[Any]], Awaitable[None]]


class Directive(enum.Enum):
    RESTART = "restart"
    STOP = "stop"
    ESCALATE = "escalate"


class Failure(Generic[Message]):
    """What a failure handler is told: which actor failed and the exception it raised.

    ``key`` is what the actor was spawned with (a :class:`~actors.Registry` passes the
    actor's key; ``None`` if none was given): a policy looks the actor up by it, never by
    parsing ``name``, which is only for logs.
    """

    def __init__(
        self,
        name: str,
        error: Exception,
        inbox: trio.MemoryReceiveChannel[Message],
        *,
        key: Hashable = None,
    ) -> None:
        self.name = name
        self.key = key
        self.error = error
        self._inbox = inbox

    def drain(self) -> list[Message]:
        """Take every message still queued (useful before ``STOP``: fail them explicitly)."""
        messages: list[Message] = []
        while True:
            try:
                messages.append(self._inbox.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return messages


FailureHandler = Callable[[Failure[Any]], Directive]


def stop_on_failure(failure: Failure[Any]) -> Directive:
    """The default policy: log the failure and stop that actor only."""
    return Directive.STOP


class Supervisor:
    """Runs actors in one nursery and applies a failure policy to each of them.

    Args:
      nursery: where actors run; use :func:`open_supervisor` to get one with its own.
      on_failure: the policy, called synchronously with a :class:`Failure`.
      max_restarts, restart_window: crash-loop guard for ``RESTART``.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        on_failure: FailureHandler = stop_on_failure,
        *,
        max_restarts: int = 3,
        restart_window: float = 60.0,
    ) -> None:
        self._nursery = nursery
        self._on_failure = on_failure
        self._max_restarts = max_restarts
        self._restart_window = restart_window
        self.running = 0
        self.failures = 0

    def spawn(
        self,
        name: str,
        actor: ActorFunction,
        *,
        capacity: int | float,
        key: Hashable = None,
        on_exit: Callable[[], None] | None = None,
    ) -> ActorRef[Any]:
        """Open a mailbox of ``capacity`` and start ``actor(inbox)`` soon.

        Synchronous on purpose: the reference exists (and accepts messages, which wait in
        the mailbox) before the actor's first step, so two callers can never race into
        spawning the same actor twice.

        Args:
          key: handed to the failure policy in :attr:`Failure.key` (which actor failed).
          on_exit: called once when the actor is over for good (returned, stopped or
            escalated), before its mailbox is closed to senders.
        """
        ref, inbox = open_mailbox(name, capacity if capacity == math.inf else int(capacity))
        self.running += 1
        self._nursery.start_soon(self._supervise, name, key, actor, inbox, on_exit, name=name)
        return ref

    def start_helper(self, task: Callable[[], Awaitable[None]], *, name: str) -> None:
        """Run ``task()`` beside the actors: housekeeping that is not an actor (no mailbox,
        no failure policy). If it raises, the error propagates and cancels the nursery,
        like any bug in the code that owns this supervisor."""
        self._nursery.start_soon(task, name=name)

    async def _supervise(
        self,
        name: str,
        key: Hashable,
        actor: ActorFunction,
        inbox: trio.MemoryReceiveChannel[Any],
        on_exit: Callable[[], None] | None,
    ) -> None:
        restarts: list[float] = []
        # A plain ``with``: the mailbox closes synchronously right after on_exit, with no
        # checkpoint in between, so nobody finds the actor registered but closed.
        with inbox:
            try:
                while True:
                    try:
                        await actor(inbox)
                        return
                    except trio.Cancelled:
                        raise
                    except Exception as error:
                        self.failures += 1
                        directive = self._on_failure(Failure(name, error, inbox, key=key))
                        if directive is Directive.RESTART:
                            now = trio.current_time()
                            restarts = [t for t in restarts if now - t < self._restart_window]
                            if len(restarts) < self._max_restarts:
                                restarts.append(now)
                                logger.warning("actor %s failed, restarting: %r", name, error)
                                continue
                            directive = Directive.STOP
                        if directive is Directive.ESCALATE:
                            logger.error("actor %s failed, escalating: %r", name, error)
                            raise
                        logger.error("actor %s failed, stopped: %r", name, error, exc_info=error)
                        return
            finally:
                self.running -= 1
                if on_exit is not None:
                    on_exit()
                _abandon_requests(inbox)


def _abandon_requests(inbox: trio.MemoryReceiveChannel[Any]) -> None:
    """Messages left in a mailbox that is closing will never be handled: an ``ask`` among
    them (a message with a :class:`Reply` in its ``reply`` field) learns it at once, as
    :class:`ActorStopped`, instead of waiting out its timeout."""
    while True:
        try:
            message = inbox.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return
        reply = getattr(message, "reply", None)
        if isinstance(reply, Reply):
            reply.abandon()


@asynccontextmanager
async def open_supervisor(
    on_failure: FailureHandler = stop_on_failure, **options: Any
) -> AsyncIterator[Supervisor]:
    """A :class:`Supervisor` with its own nursery; leaving the block waits for its actors,
    so cancel the enclosing scope (or close their mailboxes) to end them."""
    async with trio.open_nursery() as nursery:
        yield Supervisor(nursery, on_failure, **options)
