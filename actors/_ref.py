"""Mailboxes and references: how anyone talks to an actor.

An actor is an async function that owns the receive side of a bounded trio memory channel
(its *mailbox*). Everyone else holds an :class:`ActorRef`, a thin wrapper over the send side
that offers ``tell`` (fire and forget) and ``ask`` (request and reply with a timeout).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

Message = TypeVar("Message")
Answer = TypeVar("Answer")


class ActorStopped(Exception):
    """The actor behind a reference has ended: its mailbox no longer accepts messages."""


class MailboxFull(Exception):
    """``tell_nowait`` found the mailbox at capacity; the caller decides (drop, wait, fail)."""


class AskTimeout(trio.TooSlowError):
    """``ask`` got no reply in time. The request may still be processed later."""


class Reply(Generic[Answer]):
    """A one-shot answer slot carried inside an ``ask`` message.

    The actor calls :meth:`send` once. Sending to an asker that gave up is not an error:
    the answer is dropped, because the asker's timeout already told it what happened.
    """

    __slots__ = ("_receive", "_send")

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[Answer](1)

    def send(self, answer: Answer) -> None:
        try:
            self._send.send_nowait(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            pass
        self._send.close()

    def abandon(self) -> None:
        """No answer will come: the asker gets :class:`ActorStopped` now."""
        self._send.close()

    async def _wait(self) -> Answer:
        async with self._receive:
            try:
                return await self._receive.receive()
            except trio.EndOfChannel:
                raise ActorStopped("the actor dropped the request without answering") from None


class ActorRef(Generic[Message]):
    """The address of one actor.

    Args:
      name: for logs and supervision reports.
      send_channel: the send side of the actor's mailbox; the ref owns it and closes it in
        :meth:`close`.
    """

    __slots__ = ("_send", "name")

    def __init__(self, name: str, send_channel: trio.MemorySendChannel[Message]) -> None:
        self.name = name
        self._send = send_channel

    def __repr__(self) -> str:
        return f"<ActorRef {self.name}>"

    @property
    def queued(self) -> int:
        """Messages waiting in the mailbox now."""
        return self._send.statistics().current_buffer_used

    async def tell(self, message: Message) -> None:
        """Send, waiting while the mailbox is full (back-pressure on the sender).

        Not a checkpoint when the mailbox has room: the message is queued at once and the
        sender goes on. A sender that tells in a loop without waiting on anything else must
        checkpoint itself (``trio.lowlevel.checkpoint()``) now and then to let others run.

        Error handling: raises :class:`ActorStopped` if the actor has ended.
        """
        # Fast path: a scheduler round trip per message (trio's send() always yields) was
        # most of the cost of MemorySendChannel.send, ~10% of the gateway's CPU in a
        # 10k-task job. FIFO holds: trio moves a blocked sender's message into the buffer
        # as soon as room appears, so a full buffer with waiting senders still refuses this.
        try:
            self._send.send_nowait(message)
            return
        except trio.WouldBlock:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorStopped(self.name) from None
        try:
            await self._send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorStopped(self.name) from None

    def tell_nowait(self, message: Message) -> None:
        """Send without waiting.

        Error handling: raises :class:`MailboxFull` when the mailbox is at capacity (nothing
        was sent) and :class:`ActorStopped` if the actor has ended.
        """
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            raise MailboxFull(self.name) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorStopped(self.name) from None

    # A timeout argument (not a caller's cancel scope) because an unanswered ask is an
    # expected outcome with its own exception, not a cancellation.
    async def ask(
        self,
        make_message: Callable[[Reply[Answer]], Message],
        timeout: float,  # noqa: ASYNC109
    ) -> Answer:
        """Send ``make_message(reply)`` and wait for the actor's ``reply.send(answer)``.

        The timeout covers waiting for mailbox room and for the answer.

        Error handling: :class:`AskTimeout` after ``timeout`` seconds; :class:`ActorStopped`
        if the actor ended or dropped the request.
        """
        reply: Reply[Answer] = Reply()
        try:
            with trio.fail_after(timeout):
                await self.tell(make_message(reply))
                return await reply._wait()
        except trio.TooSlowError:
            raise AskTimeout(f"{self.name} did not answer within {timeout} s") from None

    def clone(self) -> ActorRef[Message]:
        """Another reference with its own send channel: the mailbox ends when all are closed."""
        return ActorRef(self.name, self._send.clone())

    def close(self) -> None:
        self._send.close()


def open_mailbox(
    name: str, capacity: int
) -> tuple[ActorRef[Message], trio.MemoryReceiveChannel[Message]]:
    """A bounded mailbox: the reference to hand out, and the inbox the actor owns.

    ``capacity`` must be a positive int or ``math.inf``; an unbounded mailbox is allowed only
    when asked for by name, never by accident.
    """
    if capacity != math.inf and (not isinstance(capacity, int) or capacity < 1):
        raise ValueError(f"mailbox capacity must be >= 1 or math.inf, got {capacity!r}")
    send, receive = trio.open_memory_channel[Message](capacity)
    return ActorRef(name, send), receive
