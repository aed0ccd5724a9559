"""Presence from the status topic (protocol v1.1): ``online`` births and ``offline`` wills;
and ``lastSeen`` from every answer.

The gateway subscribes to ``topics.status`` with ``+`` for the device; each message there goes
through :meth:`StatusTopicSource.on_message`, which turns it into a
:meth:`pm.presence.PresenceBook.update`. Devices publish these themselves (a retained birth, an
``offline`` last will); with the embedded amqtt broker the broker child publishes them on
behalf of every device it sees subscribe to, and stop listening on, its request topic, so there
is one code path for both sources.

Error handling: nothing a device sends can raise. A payload other than ``online``/``offline``,
or a status topic whose device id is not a valid id, is dropped and counted as
``bad_status`` in the shared dropped-message counter (``/healthz``, ``/metrics``). An empty
payload is the MQTT way to clear a retained message and is ignored without counting.

Any message on a device's answer topic moves that device's ``lastSeen``
(:meth:`pm.presence.PresenceBook.seen`) before the fleet routes it; the fleet counts what it
drops. An answer topic whose device id is not valid moves nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from .presence import Presence, PresenceBook
from .protocol import InvalidDeviceId, TopicTemplates

# The reason counted for a status message that is not understood.
BAD_STATUS = "bad_status"

_PAYLOADS = {b"online": Presence.ONLINE, b"offline": Presence.OFFLINE}


class StatusTopicSource:
    """Feeds a :class:`PresenceBook` from status-topic messages, and ``lastSeen`` from answers.

    Args:
      book: where presence is kept.
      topics: the topic templates (``status`` is the one read here).
      dropped: the counter of dropped device messages, by reason (``Fleet.dropped``).
      wall_clock: epoch seconds for ``lastSeen``/``connectedAt``/``disconnectedAt``.
    """

    def __init__(
        self,
        book: PresenceBook,
        topics: TopicTemplates,
        dropped: Counter[str],
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._book = book
        self._topics = topics
        self._dropped = dropped
        self._wall_clock = wall_clock

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Apply one message; returns False if ``topic`` is not a status topic (an answer, which
        only moves its device's ``lastSeen`` here, or someone else's message), True if it was
        one (applied, ignored or counted as dropped)."""
        device = self._topics.device_of_status(topic)
        if device is None:
            answering = self._topics.device_of_response(topic)
            if answering is not None:
                self.answer_seen(answering)
            return False
        if not payload:
            return True
        presence = _PAYLOADS.get(bytes(payload).strip().lower())
        if presence is None:
            self._dropped[BAD_STATUS] += 1
            return True
        try:
            self._book.update(device, presence, self._wall_clock())
        except InvalidDeviceId:
            self._dropped[BAD_STATUS] += 1
        return True

    def answer_seen(self, device: str) -> None:
        """A message arrived on the answer topic of ``device`` (as written in the topic): its
        ``lastSeen`` moves. An invalid id moves nothing (the fleet drops and counts it)."""
        try:
            self._book.seen(device, self._wall_clock())
        except InvalidDeviceId:
            pass


class AnswerRouter(Protocol):
    """What :class:`DeviceMessages` hands answers to (:class:`pm.devices.Fleet`)."""

    def on_answer(self, topic: str, payload: bytes) -> None: ...
    def on_device_answer(self, device: str, payload: bytes) -> None: ...


class DeviceMessages:
    """Routes every message the gateway's MQTT client receives: a status-topic message to
    presence, an answer to ``lastSeen`` and then to the fleet, anything else to the fleet
    (which counts it as ``foreign_topic``). A topic that is both a status and an answer topic
    (possible only with unusual templates) is a status.

    Error handling: that of :class:`StatusTopicSource` and of the fleet; nothing a device
    sends can raise.
    """

    def __init__(
        self, topics: TopicTemplates, status: StatusTopicSource, answers: AnswerRouter
    ) -> None:
        self._topics = topics
        self._status = status
        self._answers = answers
        self._answers_first = topics.answers_never_statuses

    def route(self, topic: str, payload: bytes) -> None:
        if self._answers_first:
            # The per-answer path: the topic is parsed once, for lastSeen and the routing.
            device = self._topics.device_of_response(topic)
            if device is not None:
                self._status.answer_seen(device)
                self._answers.on_device_answer(device, payload)
                return
        if not self._status.on_message(topic, payload):
            self._answers.on_answer(topic, payload)
